//! ragpipe

pub mod openai_server;

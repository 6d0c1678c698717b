//! ragpipe

pub mod app;
pub mod openai_server;

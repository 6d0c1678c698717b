//! ragpipe

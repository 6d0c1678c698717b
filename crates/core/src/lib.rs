//! Domain types shared by every ragpipe crate: ids, statuses, configuration and error kinds.
//!
//! This crate does no I/O beyond reading the configuration file it is pointed at; everything
//! here is plain data so that every other crate can depend on it.

pub mod config;
pub mod error;
pub mod ids;
pub mod status;

pub use config::Config;
pub use error::{ErrorKind, SetupError};
pub use ids::{ConversationId, DocumentId, MessageId, UserId};
pub use status::{DocumentStatus, MessageStatus, RequestStatus};

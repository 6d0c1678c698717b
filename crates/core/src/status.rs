//! Lifecycle states. Their string forms are the values the schema's check constraints allow.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownStatus { kind: stringify!($name), value: other.to_owned() }),
                }
            }
        }

        /// For decoding a status column strictly (`#[sqlx(try_from = "String")]`).
        impl TryFrom<String> for $name {
            type Error = UnknownStatus;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

/// A string that is not one of a status type's values.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} value {value:?}")]
pub struct UnknownStatus {
    /// The status type.
    pub kind: &'static str,
    /// The offending value.
    pub value: String,
}

string_enum!(
    /// Where a document is in the ingest pipeline.
    DocumentStatus {
        Queued => "queued",
        Extracting => "extracting",
        Chunking => "chunking",
        Embedding => "embedding",
        Ready => "ready",
        Failed => "failed",
    }
);

impl DocumentStatus {
    /// `ready` and `failed` end the pipeline; everything else is still moving.
    pub fn is_terminal(self) -> bool {
        matches!(self, DocumentStatus::Ready | DocumentStatus::Failed)
    }
}

string_enum!(
    /// The state of a copilot message.
    MessageStatus {
        Streaming => "streaming",
        Complete => "complete",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// The state of an agent request.
    RequestStatus {
        Queued => "queued",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_strings() {
        for s in DocumentStatus::ALL {
            assert_eq!(s.as_str().parse::<DocumentStatus>().ok(), Some(*s));
        }
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>().ok(), Some(*s));
        }
        assert!("done".parse::<RequestStatus>().is_err());
    }
}

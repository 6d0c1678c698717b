//! Reading status strings out of rows: a status that is none of its type's values is an error
//! naming it (`parse().unwrap_or(…)` would turn it into a plausible but wrong value). Column
//! names and types are checked when the crate is built, by the query macros.

use crate::StoreError;
use std::str::FromStr;

/// A status column's string as its type (`MessageStatus`, `DocumentStatus`, ...).
pub(crate) fn parse_status<T>(value: &str) -> Result<T, StoreError>
where
    T: FromStr<Err = ragpipe_core::status::UnknownStatus>,
{
    value.parse().map_err(|e| StoreError::Codec {
        context: "reading a status",
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragpipe_core::MessageStatus;

    #[test]
    fn an_unknown_status_is_an_error_not_a_guess() {
        assert_eq!(
            parse_status::<MessageStatus>("streaming").ok(),
            Some(MessageStatus::Streaming)
        );
        let err = parse_status::<MessageStatus>("archived").expect_err("not a message status");
        assert!(err.to_string().contains("\"archived\""), "{err}");
        assert_eq!(err.kind(), ragpipe_core::ErrorKind::Permanent);
    }
}

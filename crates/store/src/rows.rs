//! Reading values out of rows without panicking: a column whose name or type no longer matches
//! the schema, or a status string that is none of its type's values, is an error naming it.
//! (`sqlx::Row::get` panics on the first, and `parse().unwrap_or(…)` would turn the second into
//! a plausible but wrong value.)

use crate::StoreError;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};
use std::str::FromStr;

/// Column `name` of `row`, decoded as `T`.
pub(crate) fn column<'r, T>(row: &'r PgRow, name: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(StoreError::db("reading a column"))
}

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

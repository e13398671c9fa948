//! Times are stored as Unix milliseconds (the same integer on SQLite and PostgreSQL, so the
//! two backends cannot disagree on precision) and shown as RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_millis() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

/// RFC 3339 in UTC with millisecond precision; an out-of-range value prints as the raw number
/// rather than failing, since this is for display only.
pub fn to_rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| millis.to_string())
}

/// The UTC day of `millis`, `YYYY-MM-DD`: how usage and budgets are bucketed.
pub fn utc_day(millis: i64) -> String {
    to_rfc3339(millis).chars().take(10).collect()
}

/// Unix milliseconds of an RFC 3339 time; `None` if it does not parse.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_the_utc_date() {
        assert_eq!(utc_day(1_700_000_000_123), "2023-11-14");
    }

    #[test]
    fn parses_what_it_formats() {
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn formats_milliseconds_as_rfc3339() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

//! [`Lsn`]: a position in PostgreSQL's write-ahead log.

use std::fmt;
use std::str::FromStr;

use crate::error::PgError;

/// A position in the write-ahead log (PostgreSQL's `pg_lsn`), shown as PostgreSQL shows
/// it: two hexadecimal numbers separated by `/` (`16/B374D848`).
///
/// Positions only grow, across timelines too (a promoted standby continues from where
/// it was), so comparing two of them says which one includes the other's writes. It is
/// the read-your-writes token of [`ReadWrite`](crate::ReadWrite): a write's token is the
/// primary's position once it committed, and a standby that has replayed that far
/// shows the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PgError;

    /// Parses `16/B374D848` (either case, each half at most 8 hexadecimal digits). The
    /// error does not repeat the input (it may come from an HTTP header).
    fn from_str(s: &str) -> Result<Lsn, PgError> {
        let half = |part: &str| {
            (!part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(part, 16).ok())
                .flatten()
        };
        let (hi, lo) = s.trim().split_once('/').ok_or(PgError::InvalidLsn)?;
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((hi << 32) | lo)),
            _ => Err(PgError::InvalidLsn),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_postgres_text_form() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!(" 1/0 ".parse::<Lsn>().unwrap(), Lsn(1 << 32));
    }

    #[test]
    fn lsn_order_is_the_log_order() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
    }

    #[test]
    fn malformed_lsn_is_rejected_without_echoing_it() {
        for bad in [
            "",
            "16",
            "/1",
            "1/",
            "1/2/3",
            "g/1",
            "123456789/0",
            "0/123456789",
            "-1/0",
            "+1/0",
            "1 /0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(matches!(err, PgError::InvalidLsn), "{bad:?}: {err}");
        }
        let secret = "s3cret/x";
        assert!(
            !secret
                .parse::<Lsn>()
                .unwrap_err()
                .to_string()
                .contains("s3cret")
        );
    }
}

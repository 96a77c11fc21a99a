//! Parsing helpers shared by the backends, the service and the tools, so that every
//! place reads a value the same way: [`parse_duration`] for the duration options
//! (`pool_timeout = "30s"`) and [`suggest`] for "did you mean" hints on option names.

use std::time::Duration;

/// The longest duration [`parse_duration`] accepts: 366 days. Longer values are
/// typing mistakes (`pool_recycle = 1800h`), and far below what `Duration` and the
/// timers can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// What [`parse_duration`] accepts, for error messages.
pub const DURATION_FORMS: &str =
    "seconds (30, 0.5) or a number with a unit (500ms, 30s, 2m, 1h, 1d), at most 366 days";

/// Reads a duration as configuration writes it: seconds (`30`, `0.5`) or a number with
/// a unit (`500ms`, `30s`, `2m` or `2min`, `1h`, `1d`), from zero up to
/// [`MAX_DURATION`]. Whether zero is allowed is the caller's rule (a `pool_timeout` of
/// zero is refused by the pool's builder, a `shutdown_timeout` of zero is not).
///
/// Returns `None` for anything else (negative, unknown unit, empty, above the limit,
/// `NaN`); say what is expected with [`DURATION_FORMS`].
///
/// ```
/// use std::time::Duration;
/// use queuepool::text::parse_duration;
/// assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
/// assert_eq!(parse_duration(" 2.5 "), Some(Duration::from_millis(2500)));
/// assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
/// assert_eq!(parse_duration("-1"), None);
/// assert_eq!(parse_duration("5 parsecs"), None);
/// ```
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let value = raw.trim();
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    let number = number.trim();
    // `f64::from_str` also takes "inf", "NaN" and "+1": only plain decimals here.
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let seconds = number.parse::<f64>().ok()? * scale;
    (seconds <= MAX_DURATION.as_secs_f64()).then(|| Duration::from_secs_f64(seconds))
}

/// The name in `known` closest to `given` (case-insensitive edit distance of at most 2),
/// if any: the "did you mean `connect_timeout`?" of an unknown option.
///
/// Errors name the suggestion instead of echoing what was given: in a malformed
/// connection string a piece of the password can land where an option name is
/// expected. Inputs longer than 40 characters get no suggestion.
///
/// ```
/// use queuepool::text::suggest;
/// let known = ["connect_timeout", "sslmode"];
/// assert_eq!(suggest("conect_timeout", &known), Some("connect_timeout"));
/// assert_eq!(suggest("SSLMOD", &known), Some("sslmode"));
/// assert_eq!(suggest("password", &known), None);
/// ```
pub fn suggest(given: &str, known: &[&'static str]) -> Option<&'static str> {
    if given.chars().count() > 40 {
        return None;
    }
    let given = given.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&given, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (inputs are short: at most 40 characters, see [`suggest`]).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_and_units_from_zero_to_366_days() {
        for (raw, expected) in [
            ("0", Duration::ZERO),
            ("30", Duration::from_secs(30)),
            ("0.5", Duration::from_millis(500)),
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("2 min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("366d", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(raw), Some(expected), "{raw}");
        }
    }

    #[test]
    fn durations_refuse_negative_unknown_units_and_more_than_366_days() {
        for raw in [
            "",
            "-1",
            "+1",
            "s",
            "5 parsecs",
            "1w",
            "367d",
            "8785h",
            "inf",
            "NaN",
            "1e3",
            "1.2.3",
        ] {
            assert_eq!(parse_duration(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn suggestion_is_the_closest_name_within_two_edits() {
        let known = ["connect_timeout", "keepalives", "keepalives_idle"];
        assert_eq!(suggest("keepalive", &known), Some("keepalives"));
        assert_eq!(suggest("keepalives_idel", &known), Some("keepalives_idle"));
        assert_eq!(suggest("CONNECT_TIMEOUT", &known), Some("connect_timeout"));
        assert_eq!(suggest("timeout", &known), None);
        assert_eq!(suggest(&"k".repeat(41), &known), None);
    }
}

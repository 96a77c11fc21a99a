//! Command-line values shared by the tools, parsed by hand so that a bad value gives
//! one line naming the flag (`--pool-size: invalid value "-3": expected ...`).

use std::time::Duration;

use queuepool::{ConfigBuilder, PoolConfig, Preset};

use crate::error::ToolsError;

/// Pool sizing flags, as `queuepool serve` spells them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PoolArgs {
    /// Pool preset: dev (5/10/30 s), prod-low (10/20/30 s), high-load (20/20/60 s), as
    /// pool_size/max_overflow/pool_timeout [default: dev]
    #[arg(long, value_name = "NAME", visible_alias = "preset")]
    pub pool_preset: Option<String>,
    /// Connections kept open and reused [default: from the preset]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pool_size: Option<String>,
    /// Extra connections above pool_size under load [default: from the preset]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_overflow: Option<String>,
    /// How long a checkout waits at the limit, in seconds or with a unit (500ms, 2s)
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    pub pool_timeout: Option<String>,
}

impl PoolArgs {
    /// The preset named by `--pool-preset` (default `dev`).
    pub fn preset(&self) -> Result<Preset, ToolsError> {
        match &self.pool_preset {
            None => Ok(Preset::Dev),
            Some(name) => name
                .parse::<Preset>()
                .map_err(|e| ToolsError::arg("--pool-preset", e.to_string())),
        }
    }

    /// `--pool-size`, if given.
    pub fn pool_size(&self) -> Result<Option<u32>, ToolsError> {
        self.pool_size
            .as_deref()
            .map(|v| parse_count("--pool-size", v))
            .transpose()
    }

    /// `--max-overflow`, if given.
    pub fn max_overflow(&self) -> Result<Option<u32>, ToolsError> {
        self.max_overflow
            .as_deref()
            .map(|v| parse_count("--max-overflow", v))
            .transpose()
    }

    /// `--pool-timeout`, if given.
    pub fn pool_timeout(&self) -> Result<Option<Duration>, ToolsError> {
        self.pool_timeout
            .as_deref()
            .map(|v| parse_duration("--pool-timeout", v))
            .transpose()
    }

    /// A builder with the preset and every size flag applied.
    pub fn builder(&self) -> Result<ConfigBuilder, ToolsError> {
        let mut builder = PoolConfig::builder().preset(self.preset()?);
        if let Some(n) = self.pool_size()? {
            builder = builder.pool_size(n);
        }
        if let Some(n) = self.max_overflow()? {
            builder = builder.max_overflow(n);
        }
        if let Some(t) = self.pool_timeout()? {
            builder = builder.pool_timeout(t);
        }
        Ok(builder)
    }
}

/// Validates a builder, naming the flag of a rejected field.
pub(crate) fn build(builder: ConfigBuilder) -> Result<PoolConfig, ToolsError> {
    builder.build().map_err(|e| {
        let key = match &e {
            queuepool::ConfigError::Invalid { field, .. } => {
                format!("--{}", field.replace('_', "-"))
            }
            _ => "pool".to_owned(),
        };
        ToolsError::arg(&key, e.to_string())
    })
}

fn invalid(key: &str, value: &str, expected: &str) -> ToolsError {
    ToolsError::arg(key, format!("invalid value {value:?}: expected {expected}"))
}

/// A whole number >= 0.
pub(crate) fn parse_count(key: &str, raw: &str) -> Result<u32, ToolsError> {
    raw.trim()
        .parse::<u32>()
        .map_err(|_| invalid(key, raw, "a whole number >= 0"))
}

/// A whole number >= 1.
pub(crate) fn parse_positive(key: &str, raw: &str) -> Result<u32, ToolsError> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(key, raw, "a whole number >= 1")),
    }
}

/// A comma-separated list of whole numbers >= 1 (`1,8,32`), at most `max` each.
pub(crate) fn parse_list(key: &str, raw: &str, max: u32) -> Result<Vec<u32>, ToolsError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => out.push(n),
            _ => {
                return Err(invalid(
                    key,
                    raw,
                    &format!("comma-separated whole numbers from 1 to {max}, like 1,8,32"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(key, raw, "at least one number, like 1,8,32"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Seconds (`30`, `0.5`) or a number with a unit (`500ms`, `30s`, `2m`); above zero.
pub(crate) fn parse_duration(key: &str, raw: &str) -> Result<Duration, ToolsError> {
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
        _ => f64::NAN,
    };
    match number.trim().parse::<f64>().map(|n| n * scale) {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(invalid(
            key,
            raw,
            "a duration above zero: seconds (30, 0.5) or with a unit (500ms, 30s, 2m)",
        )),
    }
}

/// Milliseconds (`50`, `2.5`) above zero.
pub(crate) fn parse_millis(key: &str, raw: &str) -> Result<Duration, ToolsError> {
    match raw.trim().trim_end_matches("ms").trim().parse::<f64>() {
        Ok(ms) if ms > 0.0 && ms <= 3_600_000.0 => Ok(Duration::from_secs_f64(ms / 1000.0)),
        _ => Err(invalid(key, raw, "milliseconds above zero, like 50 or 2.5")),
    }
}

/// The URL with any password replaced by `***` (URL userinfo, a `password` query
/// parameter, or libpq's `password=`).
pub fn redact_url(raw: &str) -> String {
    if raw.contains("://") {
        return match url::Url::parse(raw) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                if parsed.query().is_some() {
                    let pairs: Vec<(String, String)> = parsed
                        .query_pairs()
                        .map(|(k, v)| {
                            let secret = k.to_ascii_lowercase().contains("password");
                            (
                                k.into_owned(),
                                if secret { "***".into() } else { v.into_owned() },
                            )
                        })
                        .collect();
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => format!("{}://***", raw.split("://").next().unwrap_or_default()),
        };
    }
    raw.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_and_garbage_sizes_name_the_flag() {
        let err = parse_count("--pool-size", "-3").unwrap_err().to_string();
        assert_eq!(
            err,
            "--pool-size: invalid value \"-3\": expected a whole number >= 0"
        );
        assert!(parse_positive("--instances", "0").is_err());
        assert_eq!(
            parse_list("--concurrency", "32, 1,8,8", 1000).unwrap(),
            [1, 8, 32]
        );
        assert!(parse_list("--concurrency", "1,x", 1000).is_err());
        assert!(parse_list("--concurrency", "", 1000).is_err());
    }

    #[test]
    fn durations_take_units_and_refuse_zero() {
        assert_eq!(
            parse_duration("--d", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("--d", "2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("--d", "1m").unwrap(),
            Duration::from_secs(60)
        );
        assert!(parse_duration("--d", "0").is_err());
        assert!(parse_duration("--d", "-1").is_err());
        assert!(parse_duration("--d", "5 parsecs").is_err());
        assert_eq!(
            parse_millis("--t", "2.5").unwrap(),
            Duration::from_micros(2500)
        );
    }

    #[test]
    fn unknown_preset_lists_the_choices() {
        let args = PoolArgs {
            pool_preset: Some("huge".into()),
            ..PoolArgs::default()
        };
        let err = args.preset().unwrap_err().to_string();
        assert!(
            err.starts_with("--pool-preset: unknown pool preset \"huge\""),
            "{err}"
        );
        assert!(err.contains("dev, prod-low, high-load"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db?sslmode=require"),
            "postgres://u:***@h:5/db?sslmode=require"
        );
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        assert!(!redact_url("mysql://root:pw@127.0.0.1/x?password=pw").contains("pw"));
    }
}

//! Command-line values shared by the tools and `queuepool serve`: the pool flags
//! ([`PoolArgs`], read from the same `POOL_*` environment variables everywhere) and the
//! value parsers, which clap calls for a flag or a variable and the service's config
//! calls for a TOML value, so a value means the same wherever it is written.

use std::time::Duration;

use queuepool::text::{DURATION_FORMS, parse_duration as duration_text};
use queuepool::{ConfigBuilder, Overflow, PoolConfig, Preset};

use crate::error::ToolsError;

/// The pool flags, as `queuepool serve`, `verify` and `bench` spell them, each with its
/// environment variable: `POOL_SIZE=10 queuepool verify` checks a pool of 10, like
/// `POOL_SIZE=10 queuepool serve` serves one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PoolArgs {
    /// Pool preset: dev (5/10/30 s), prod-low (10/20/30 s), high-load (20/20/60 s), as
    /// pool_size/max_overflow/pool_timeout [default: dev]
    #[arg(long, env = "POOL_PRESET", value_name = "NAME", visible_alias = "preset",
          value_parser = preset)]
    pub pool_preset: Option<Preset>,
    /// Connections kept open and reused [default: from the preset, 5]; `auto` lets
    /// the pool find the database's best concurrency between 2 and pool_size +
    /// max_overflow of the preset, `auto:FLOOR..CEILING` between those
    #[arg(long, env = "POOL_SIZE", value_name = "N|auto", allow_hyphen_values = true,
          value_parser = pool_size)]
    pub pool_size: Option<PoolSize>,
    /// Extra connections above pool_size under load; -1 or "unlimited" for no limit
    /// [default: from the preset, 10]
    #[arg(long, env = "MAX_OVERFLOW", value_name = "N", allow_hyphen_values = true,
          value_parser = overflow)]
    pub max_overflow: Option<Overflow>,
    /// How long a checkout waits when every connection is in use, in seconds (or with a
    /// unit: 500ms, 30s, 2m) [default: from the preset, 30]
    #[arg(long, env = "POOL_TIMEOUT", value_name = "SECONDS", allow_hyphen_values = true,
          value_parser = duration)]
    pub pool_timeout: Option<Duration>,
    /// Maximum connection lifetime in seconds (or 30m, 1h); -1 or "off" keeps
    /// connections forever [default: 1800]
    #[arg(long, env = "POOL_RECYCLE", value_name = "SECONDS", allow_hyphen_values = true,
          value_parser = recycle)]
    pub pool_recycle: Option<Recycle>,
    /// Check a connection before lending it if it was idle for more than a second
    /// [default: true]
    #[arg(long, env = "POOL_PRE_PING", value_name = "BOOL", value_parser = boolean)]
    pub pool_pre_ping: Option<bool>,
}

/// A `pool_size` value: a number, or `auto` with optional bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSize {
    /// A fixed `pool_size`.
    Fixed(u32),
    /// `pool_size = auto` ([`queuepool::autosize`]), with `(floor, ceiling)` if given
    /// (`auto:2..40`); otherwise 2 and `pool_size + max_overflow` of the preset.
    Auto(Option<(u32, u32)>),
}

impl PoolSize {
    /// Applies it to `builder`, after the preset and `max_overflow` (the default
    /// ceiling of `auto` is `pool_size + max_overflow`).
    pub fn apply(self, builder: ConfigBuilder) -> ConfigBuilder {
        match self {
            PoolSize::Fixed(n) => builder.pool_size(n),
            PoolSize::Auto(None) => builder.auto_size_default(),
            PoolSize::Auto(Some((floor, ceiling))) => builder.auto_size(floor, ceiling),
        }
    }
}

impl std::fmt::Display for PoolSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolSize::Fixed(n) => write!(f, "{n}"),
            PoolSize::Auto(None) => f.write_str("auto"),
            PoolSize::Auto(Some((lo, hi))) => write!(f, "auto:{lo}..{hi}"),
        }
    }
}

/// Value parser: `pool_size`, a whole number >= 0, `auto` or `auto:FLOOR..CEILING`.
pub fn pool_size(raw: &str) -> Result<PoolSize, String> {
    let value = raw.trim();
    if value.eq_ignore_ascii_case("auto") {
        return Ok(PoolSize::Auto(None));
    }
    if let Some(bounds) = value
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("auto:"))
        .map(|_| &value[5..])
    {
        return queuepool::autosize::parse_bounds(bounds)
            .map(|b| PoolSize::Auto(Some(b)))
            .ok_or_else(|| {
                "expected auto:FLOOR..CEILING with 1 <= FLOOR <= CEILING <= 10000, like auto:2..40"
                    .to_owned()
            });
    }
    count(value)
        .map(PoolSize::Fixed)
        .map_err(|_| "expected a whole number >= 0, auto, or auto:FLOOR..CEILING".to_owned())
}

/// A `pool_recycle` value: a lifetime, or `None` for "keep connections forever".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recycle(pub Option<Duration>);

impl PoolArgs {
    /// The preset named by `--pool-preset` (default `dev`).
    pub fn preset(&self) -> Result<Preset, ToolsError> {
        Ok(self.pool_preset.unwrap_or(Preset::Dev))
    }

    /// `--pool-size`, if given.
    pub fn pool_size(&self) -> Result<Option<PoolSize>, ToolsError> {
        Ok(self.pool_size)
    }

    /// `--max-overflow`, if given.
    pub fn max_overflow(&self) -> Result<Option<Overflow>, ToolsError> {
        Ok(self.max_overflow)
    }

    /// `--pool-timeout`, if given.
    pub fn pool_timeout(&self) -> Result<Option<Duration>, ToolsError> {
        Ok(self.pool_timeout)
    }

    /// A builder with the preset and every given flag applied.
    pub fn builder(&self) -> Result<ConfigBuilder, ToolsError> {
        let mut builder = PoolConfig::builder().preset(self.preset()?);
        match self.max_overflow {
            Some(Overflow::Limited(n)) => builder = builder.max_overflow(n),
            Some(Overflow::Unlimited) => builder = builder.unlimited_overflow(),
            None => {}
        }
        if let Some(size) = self.pool_size {
            builder = size.apply(builder);
        }
        if let Some(t) = self.pool_timeout {
            builder = builder.pool_timeout(t);
        }
        if let Some(Recycle(r)) = self.pool_recycle {
            builder = builder.pool_recycle(r);
        }
        if let Some(p) = self.pool_pre_ping {
            builder = builder.pre_ping(p);
        }
        Ok(builder)
    }
}

/// Value parser: a pool preset name.
pub fn preset(raw: &str) -> Result<Preset, String> {
    raw.trim().parse::<Preset>().map_err(|e| e.to_string())
}

/// Value parser: a whole number >= 0.
pub fn count(raw: &str) -> Result<u32, String> {
    raw.trim()
        .parse::<u32>()
        .map_err(|_| "expected a whole number >= 0".to_owned())
}

/// Value parser: a whole number >= 1.
pub fn positive(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number >= 1".to_owned()),
    }
}

/// Value parser: `max_overflow`, a whole number >= 0, or -1 / `unlimited`.
pub fn overflow(raw: &str) -> Result<Overflow, String> {
    let value = raw.trim();
    if value == "-1" || value.eq_ignore_ascii_case("unlimited") {
        return Ok(Overflow::Unlimited);
    }
    value
        .parse::<u32>()
        .map(Overflow::Limited)
        .map_err(|_| "expected a whole number >= 0, or -1 / unlimited".to_owned())
}

/// Value parser: a duration ([`queuepool::text::parse_duration`]: 0 to 366 days).
pub fn duration(raw: &str) -> Result<Duration, String> {
    duration_text(raw).ok_or_else(|| format!("expected a duration: {DURATION_FORMS}"))
}

/// Value parser: a duration above zero.
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    match duration(raw)? {
        d if d.is_zero() => Err(format!("expected a duration above zero: {DURATION_FORMS}")),
        d => Ok(d),
    }
}

/// Value parser: `pool_recycle`, a duration or -1 / `off` / `none` / `never`.
pub fn recycle(raw: &str) -> Result<Recycle, String> {
    let value = raw.trim().to_ascii_lowercase();
    if matches!(value.as_str(), "-1" | "off" | "none" | "never") {
        return Ok(Recycle(None));
    }
    duration_text(raw)
        .map(|d| Recycle(Some(d)))
        .ok_or_else(|| format!("expected -1 / off, or a duration: {DURATION_FORMS}"))
}

/// Value parser: true/false, 1/0, yes/no, on/off.
pub fn boolean(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
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
    ToolsError::arg(key, format!("invalid value {value:?}: {expected}"))
}

/// A whole number >= 0.
pub(crate) fn parse_count(key: &str, raw: &str) -> Result<u32, ToolsError> {
    count(raw).map_err(|e| invalid(key, raw, &e))
}

/// A whole number >= 1.
pub(crate) fn parse_positive(key: &str, raw: &str) -> Result<u32, ToolsError> {
    positive(raw).map_err(|e| invalid(key, raw, &e))
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
                    &format!("expected comma-separated whole numbers from 1 to {max}, like 1,8,32"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(
            key,
            raw,
            "expected at least one number, like 1,8,32",
        ));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A duration above zero ([`positive_duration`]), naming `key` in the error.
pub(crate) fn parse_duration(key: &str, raw: &str) -> Result<Duration, ToolsError> {
    positive_duration(raw).map_err(|e| invalid(key, raw, &e))
}

/// Milliseconds (`50`, `2.5`) above zero.
pub(crate) fn parse_millis(key: &str, raw: &str) -> Result<Duration, ToolsError> {
    match raw.trim().trim_end_matches("ms").trim().parse::<f64>() {
        Ok(ms) if ms > 0.0 && ms <= 3_600_000.0 => Ok(Duration::from_secs_f64(ms / 1000.0)),
        _ => Err(invalid(
            key,
            raw,
            "expected milliseconds above zero, like 50 or 2.5",
        )),
    }
}

pub use queuepool::url::redact_url;

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
        let err = preset("huge").unwrap_err();
        assert!(err.starts_with("unknown pool preset \"huge\""), "{err}");
        assert!(err.contains("dev, prod-low, high-load"), "{err}");
    }

    #[test]
    fn pool_flags_parse_to_typed_values_and_reach_the_builder() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            pool: PoolArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--preset",
            "prod-low",
            "--pool-size",
            "3",
            "--max-overflow",
            "-1",
            "--pool-timeout",
            "500ms",
            "--pool-recycle",
            "off",
            "--pool-pre-ping",
            "no",
        ])
        .unwrap();
        let config = cli.pool.builder().unwrap().build().unwrap();
        assert_eq!(config.pool_size, 3);
        assert_eq!(config.max_overflow, Overflow::Unlimited);
        assert_eq!(config.pool_timeout, Duration::from_millis(500));
        assert_eq!(config.pool_recycle, None);
        assert!(!config.pre_ping);
        let error = Cli::try_parse_from(["x", "--pool-size", "-3"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains(
                "invalid value '-3' for '--pool-size <N|auto>': expected a whole number >= 0"
            ),
            "{error}"
        );
    }

    #[test]
    fn pool_size_auto_takes_the_presets_bounds_after_max_overflow_or_its_own() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            pool: PoolArgs,
        }
        let config = |argv: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied())).unwrap();
            cli.pool.builder().unwrap().build().unwrap()
        };
        // dev: pool_size 5; max_overflow given after --pool-size still sets the ceiling.
        let c = config(&["--pool-size", "auto", "--max-overflow", "6"]);
        assert_eq!((c.auto_size, c.pool_size), (Some((2, 11)), 5));
        let c = config(&["--pool-size", "AUTO:3..4"]);
        assert_eq!(
            (c.auto_size, c.pool_size, c.max_connections()),
            (Some((3, 4)), 4, 4)
        );
        assert_eq!(config(&["--pool-size", "8"]).auto_size, None);
        for bad in ["auto:0..4", "auto:5..2", "auto:", "autox"] {
            assert!(
                Cli::try_parse_from(["x", "--pool-size", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(pool_size("auto:2..40").unwrap().to_string(), "auto:2..40");
    }
}

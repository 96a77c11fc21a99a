//! Pool configuration: [`PoolConfig`], its validating [`ConfigBuilder`] and [`Preset`]s.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// How many connections may be opened above `pool_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// At most this many extra connections.
    Limited(u32),
    /// No limit (SQLAlchemy's `max_overflow=-1`): checkouts never wait.
    Unlimited,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overflow::Limited(n) => write!(f, "{n}"),
            Overflow::Unlimited => f.write_str("-1"),
        }
    }
}

/// Which idle connection a checkout takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest returned first: rotates through every connection (SQLAlchemy's default).
    #[default]
    Fifo,
    /// Most recently returned first: keeps the hottest connection warm and lets the
    /// others age out as overflow.
    Lifo,
}

/// What happens to a connection when it is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetOnReturn {
    /// Run [`Manager::reset`](crate::Manager::reset) (a rollback) before reuse.
    #[default]
    Rollback,
    /// Reuse as it is. Only safe when every borrower commits or rolls back itself.
    None,
}

/// The tutorial's presets. Every value can still be overridden on the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `pool_size` 5, `max_overflow` 10, `pool_timeout` 30 s, `pool_recycle` 30 min.
    Dev,
    /// `pool_size` 10, `max_overflow` 20, `pool_timeout` 30 s, `pool_recycle` 30 min.
    ProdLow,
    /// `pool_size` 20, `max_overflow` 20, `pool_timeout` 60 s, `pool_recycle` 30 min.
    HighLoad,
}

impl Preset {
    /// Every preset, in order of size.
    pub const ALL: [Preset; 3] = [Preset::Dev, Preset::ProdLow, Preset::HighLoad];

    /// The preset's name as written in configuration (`dev`, `prod-low`, `high-load`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Dev => "dev",
            Preset::ProdLow => "prod-low",
            Preset::HighLoad => "high-load",
        }
    }

    /// `(pool_size, max_overflow, pool_timeout)` of the preset; `pool_recycle` is 30 min.
    pub fn sizes(self) -> (u32, u32, Duration) {
        match self {
            Preset::Dev => (5, 10, Duration::from_secs(30)),
            Preset::ProdLow => (10, 20, Duration::from_secs(30)),
            Preset::HighLoad => (20, 20, Duration::from_secs(60)),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ConfigError::UnknownPreset(s.to_owned()))
    }
}

/// A pool configuration. Build one with [`PoolConfig::builder`], which validates it;
/// [`Pool::new`](crate::Pool::new) validates it again, so a field changed after
/// `build()` (the fields stay public for reading) cannot make an invalid pool.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Connections kept open and reused (at least 1; for no limit use
    /// [`ConfigBuilder::unlimited_overflow`]).
    pub pool_size: u32,
    /// Extra connections allowed above `pool_size` under load.
    pub max_overflow: Overflow,
    /// How long a checkout waits when the limit is reached.
    pub pool_timeout: Duration,
    /// Maximum lifetime of a connection (±2.5 % jitter); `None` keeps connections forever.
    pub pool_recycle: Option<Duration>,
    /// Validate a connection before lending it, unless it was used within the last second.
    pub pre_ping: bool,
    /// What to do with a returned connection before it is reused.
    pub reset_on_return: ResetOnReturn,
    /// Which idle connection is lent first.
    pub order: Order,
    /// An overflow connection idle this long is closed (zero: closed on return).
    pub overflow_idle: Duration,
    /// Open `pool_size` connections when the pool is built.
    pub prefill: bool,
    /// Bound on one connection attempt (and on one ping or reset).
    pub connect_timeout: Duration,
    /// Connection attempts in flight at once.
    pub max_connecting: u32,
    /// Warn when a connection is held longer than this.
    pub leak_threshold: Option<Duration>,
    /// Name of the pool in logs and metric labels.
    pub name: String,
    /// `pool_size = auto`: `(floor, ceiling)` of the adaptive limit on connections
    /// lent at once ([`crate::autosize`]); the ceiling replaces `pool_size +
    /// max_overflow` as the most connections open, `pool_size` stays the number kept
    /// open when idle. `None`: a fixed limit.
    pub auto_size: Option<(u32, u32)>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let (pool_size, max_overflow, pool_timeout) = Preset::Dev.sizes();
        PoolConfig {
            pool_size,
            max_overflow: Overflow::Limited(max_overflow),
            pool_timeout,
            pool_recycle: Some(DEFAULT_RECYCLE),
            pre_ping: true,
            reset_on_return: ResetOnReturn::Rollback,
            order: Order::Fifo,
            overflow_idle: Duration::from_secs(10),
            prefill: true,
            connect_timeout: Duration::from_secs(10),
            max_connecting: 2,
            leak_threshold: None,
            name: "default".to_owned(),
            auto_size: None,
        }
    }
}

const DEFAULT_RECYCLE: Duration = Duration::from_secs(30 * 60);
/// Upper bound for `pool_size` and a limited `max_overflow`: far above what any
/// database accepts, low enough to catch a typo.
pub const MAX_POOL_SIZE: u32 = 10_000;
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl PoolConfig {
    /// A builder starting from the defaults (the `dev` preset).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: PoolConfig::default(),
        }
    }

    /// The configuration of a preset, with every other option at its default.
    pub fn preset(preset: Preset) -> PoolConfig {
        let mut config = PoolConfig::default();
        config.apply_preset(preset);
        config
    }

    /// The bounds `pool_size = auto` takes when none are given: floor 2 and ceiling
    /// `pool_size + max_overflow` (at most 10000; an unlimited overflow counts as
    /// `pool_size + 100`).
    pub fn default_auto_bounds(&self) -> (u32, u32) {
        let ceiling = match self.max_overflow {
            Overflow::Limited(n) => self.pool_size.saturating_add(n),
            Overflow::Unlimited => self.pool_size.saturating_add(100),
        }
        .clamp(1, MAX_POOL_SIZE);
        (2.min(ceiling), ceiling)
    }

    fn apply_preset(&mut self, preset: Preset) {
        let (size, overflow, timeout) = preset.sizes();
        self.pool_size = size;
        self.max_overflow = Overflow::Limited(overflow);
        self.pool_timeout = timeout;
        self.pool_recycle = Some(DEFAULT_RECYCLE);
    }

    /// `pool_size + max_overflow` (with `auto_size`, its ceiling), the most
    /// connections open at once.
    pub fn max_connections(&self) -> usize {
        if let Some((_, ceiling)) = self.auto_size {
            return ceiling as usize;
        }
        match self.max_overflow {
            Overflow::Limited(n) => self.pool_size as usize + n as usize,
            Overflow::Unlimited => usize::MAX,
        }
    }

    /// Checks every bound; the error names the field and its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, value: String, allowed: &'static str| {
            Err(ConfigError::Invalid {
                field,
                value,
                allowed,
            })
        };
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            // SQLAlchemy reads pool_size=0 as "no limit"; a pool that silently capped
            // at max_overflow instead would surprise those users, so say it.
            return invalid(
                "pool_size",
                self.pool_size.to_string(),
                "1..=10000; SQLAlchemy's pool_size=0 (no limit) is written unlimited_overflow() here",
            );
        }
        if let Overflow::Limited(n) = self.max_overflow
            && n > MAX_POOL_SIZE
        {
            return invalid("max_overflow", n.to_string(), "0..=10000 or unlimited");
        }
        for (field, value) in [
            ("pool_timeout", self.pool_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() || value > MAX_DURATION {
                return invalid(
                    field,
                    format!("{value:?}"),
                    "greater than 0 and at most 24 h",
                );
            }
        }
        if let Some(recycle) = self.pool_recycle
            && (recycle < Duration::from_secs(1) || recycle > 30 * MAX_DURATION)
        {
            return invalid(
                "pool_recycle",
                format!("{recycle:?}"),
                "1 s to 30 days, or none",
            );
        }
        if self.overflow_idle > MAX_DURATION {
            return invalid(
                "overflow_idle",
                format!("{:?}", self.overflow_idle),
                "0 to 24 h",
            );
        }
        if self.max_connecting == 0 || self.max_connecting > 1000 {
            return invalid(
                "max_connecting",
                self.max_connecting.to_string(),
                "1..=1000",
            );
        }
        if let Some(leak) = self.leak_threshold
            && (leak < Duration::from_millis(10) || leak > MAX_DURATION)
        {
            return invalid(
                "leak_threshold",
                format!("{leak:?}"),
                "10 ms to 24 h, or none",
            );
        }
        if let Some((floor, ceiling)) = self.auto_size {
            if floor == 0 || floor > ceiling || ceiling > MAX_POOL_SIZE {
                return invalid(
                    "auto_size",
                    format!("{floor}..{ceiling}"),
                    "floor..ceiling with 1 <= floor <= ceiling <= 10000",
                );
            }
            if self.pool_size > ceiling {
                return invalid(
                    "pool_size",
                    self.pool_size.to_string(),
                    "at most the auto_size ceiling (connections kept open cannot exceed the most lent)",
                );
            }
        }
        if self.name.is_empty() || self.name.len() > 64 {
            return invalid("name", self.name.clone(), "1 to 64 characters");
        }
        Ok(())
    }
}

/// Builds a [`PoolConfig`]; [`ConfigBuilder::build`] validates every field.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: PoolConfig,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => |$c:ident, $v:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $v: $ty) -> Self {
                let $c = &mut self.config;
                $body;
                self
            }
        )*
    };
}

impl ConfigBuilder {
    /// Starts from a preset's sizes. Call it first: later setters override it.
    pub fn preset(mut self, preset: Preset) -> Self {
        self.config.apply_preset(preset);
        self
    }

    setters! {
        /// Connections kept open and reused (default 5).
        pool_size: u32 => |c, v| c.pool_size = v;
        /// Extra connections allowed above `pool_size` (default 10).
        max_overflow: u32 => |c, v| c.max_overflow = Overflow::Limited(v);
        /// How long a checkout waits at the limit (default 30 s).
        pool_timeout: Duration => |c, v| c.pool_timeout = v;
        /// Maximum connection lifetime, ±2.5 % jitter (default 30 min; `None`: forever).
        pool_recycle: Option<Duration> => |c, v| c.pool_recycle = v;
        /// Validate idle connections before lending them (default on).
        pre_ping: bool => |c, v| c.pre_ping = v;
        /// Reset a connection when it is returned (default rollback).
        reset_on_return: ResetOnReturn => |c, v| c.reset_on_return = v;
        /// FIFO or LIFO lending of idle connections (default FIFO).
        order: Order => |c, v| c.order = v;
        /// Close overflow connections idle this long (default 10 s, zero: on return).
        overflow_idle: Duration => |c, v| c.overflow_idle = v;
        /// Open `pool_size` connections when the pool is built (default on).
        prefill: bool => |c, v| c.prefill = v;
        /// Bound on one connection attempt (default 10 s).
        connect_timeout: Duration => |c, v| c.connect_timeout = v;
        /// Connection attempts in flight at once (default 2).
        max_connecting: u32 => |c, v| c.max_connecting = v;
        /// Warn when a connection is held longer than this (default off).
        leak_threshold: Option<Duration> => |c, v| c.leak_threshold = v;
    }

    /// `pool_size = auto`: lend at most an adaptive limit of connections at once,
    /// between `floor` and `ceiling` ([`crate::autosize`]). Checkouts above the limit
    /// wait in the same queue and for the same `pool_timeout` as at a fixed limit; the
    /// limit shrinks by not lending returned connections again, never by taking one
    /// away. `ceiling` is then the most connections open (it replaces `pool_size +
    /// max_overflow`); `pool_size` stays the number kept open, lowered to the ceiling
    /// if above it (call `pool_size` after this to choose another).
    pub fn auto_size(mut self, floor: u32, ceiling: u32) -> Self {
        self.config.auto_size = Some((floor, ceiling));
        self.config.pool_size = self.config.pool_size.min(ceiling).max(1);
        self
    }

    /// `pool_size = auto` with the default bounds of the sizes set so far: a floor of
    /// 2 (or less, if `pool_size + max_overflow` is smaller) and a ceiling of
    /// `pool_size + max_overflow` (set the sizes or the preset first).
    pub fn auto_size_default(self) -> Self {
        let (floor, ceiling) = self.config.default_auto_bounds();
        self.auto_size(floor, ceiling)
    }

    /// No limit on overflow connections.
    pub fn unlimited_overflow(mut self) -> Self {
        self.config.max_overflow = Overflow::Unlimited;
        self
    }

    /// Name of the pool in logs and metric labels (default `default`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<PoolConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_tutorials_dev_preset() {
        let c = PoolConfig::builder().build().unwrap();
        assert_eq!(c.pool_size, 5);
        assert_eq!(c.max_overflow, Overflow::Limited(10));
        assert_eq!(c.pool_timeout, Duration::from_secs(30));
        assert_eq!(c.pool_recycle, Some(Duration::from_secs(1800)));
        assert!(c.pre_ping && c.prefill);
        assert_eq!(c.max_connections(), 15);
    }

    #[test]
    fn presets_match_the_tutorials_table() {
        let p = PoolConfig::builder()
            .preset("prod-low".parse().unwrap())
            .build()
            .unwrap();
        assert_eq!((p.pool_size, p.max_overflow), (10, Overflow::Limited(20)));
        let h = PoolConfig::preset(Preset::HighLoad);
        assert_eq!((h.pool_size, h.max_overflow), (20, Overflow::Limited(20)));
        assert_eq!(h.pool_timeout, Duration::from_secs(60));
        let overridden = PoolConfig::builder()
            .preset(Preset::HighLoad)
            .pool_size(3)
            .build()
            .unwrap();
        assert_eq!(overridden.pool_size, 3);
        assert_eq!(overridden.max_overflow, Overflow::Limited(20));
    }

    #[test]
    fn unknown_preset_names_the_choices() {
        let err = "huge".parse::<Preset>().unwrap_err().to_string();
        assert!(
            err.contains("huge") && err.contains("dev, prod-low, high-load"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_field_and_range() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (PoolConfig::builder().pool_size(0), "pool_size"),
            (PoolConfig::builder().pool_size(20_000), "pool_size"),
            (PoolConfig::builder().max_overflow(20_000), "max_overflow"),
            (
                PoolConfig::builder().pool_timeout(Duration::ZERO),
                "pool_timeout",
            ),
            (
                PoolConfig::builder().connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                PoolConfig::builder().pool_recycle(Some(Duration::from_millis(5))),
                "pool_recycle",
            ),
            (PoolConfig::builder().max_connecting(0), "max_connecting"),
            (
                PoolConfig::builder().leak_threshold(Some(Duration::ZERO)),
                "leak_threshold",
            ),
            (PoolConfig::builder().name(""), "name"),
            (PoolConfig::builder().auto_size(0, 4), "auto_size"),
            (PoolConfig::builder().auto_size(5, 3), "auto_size"),
            (PoolConfig::builder().auto_size(2, 20_000), "auto_size"),
            (
                PoolConfig::builder().auto_size(2, 8).pool_size(10),
                "pool_size",
            ),
        ];
        for (builder, field) in cases {
            let err = builder.build().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(field) && msg.contains("allowed"),
                "{field}: {msg}"
            );
        }
    }

    #[test]
    fn zero_pool_size_is_rejected_naming_unlimited_overflow() {
        for builder in [
            PoolConfig::builder().pool_size(0),
            PoolConfig::builder().pool_size(0).max_overflow(3),
            PoolConfig::builder().pool_size(0).unlimited_overflow(),
        ] {
            let msg = builder.build().unwrap_err().to_string();
            assert!(
                msg.contains("pool_size: 0") && msg.contains("unlimited_overflow()"),
                "{msg}"
            );
        }
        let u = PoolConfig::builder().unlimited_overflow().build().unwrap();
        assert_eq!(u.max_connections(), usize::MAX);
        assert_eq!(u.max_overflow.to_string(), "-1");
    }

    #[test]
    fn auto_size_ceiling_is_the_most_connections_and_defaults_follow_the_preset() {
        let c = PoolConfig::builder()
            .pool_size(2)
            .auto_size(2, 40)
            .build()
            .unwrap();
        assert_eq!((c.auto_size, c.max_connections()), (Some((2, 40)), 40));
        let dev = PoolConfig::builder().auto_size_default().build().unwrap();
        assert_eq!(dev.auto_size, Some((2, 15)));
        let high = PoolConfig::builder()
            .preset(Preset::HighLoad)
            .auto_size_default()
            .build()
            .unwrap();
        assert_eq!(high.auto_size, Some((2, 40)));
        let tiny = PoolConfig::builder()
            .pool_size(1)
            .max_overflow(0)
            .auto_size_default()
            .build()
            .unwrap();
        assert_eq!(tiny.auto_size, Some((1, 1)));
    }
}

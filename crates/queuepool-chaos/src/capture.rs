//! A `tracing` subscriber that keeps events in memory, for the scenarios that read the
//! library's log lines (leak warnings, secrets at debug level).
//!
//! [`install`] sets it as the process's global subscriber once (the binary and the test
//! harness call it; a library never would). It records nothing until a [`Capture`] is
//! active, so other scenarios pay nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Its level.
    pub level: Level,
    /// Its target (`queuepool::pool`...).
    pub target: String,
    /// The message.
    pub message: String,
    /// Every other field as `name=value`, space separated.
    pub fields: String,
}

impl Captured {
    /// Message and fields, as a log line would show them.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {} {}",
            self.level, self.target, self.message, self.fields
        )
    }
}

#[derive(Default)]
struct Store {
    active: AtomicUsize,
    events: Mutex<Vec<Captured>>,
}

fn store() -> &'static Arc<Store> {
    static STORE: OnceLock<Arc<Store>> = OnceLock::new();
    STORE.get_or_init(Default::default)
}

struct CaptureLayer(Arc<Store>);

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Asked again for every event: recording is switched on and off at run time.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.0.active.load(Ordering::Relaxed) > 0
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if self.0.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut v = Fields::default();
        event.record(&mut v);
        let meta = event.metadata();
        let captured = Captured {
            level: *meta.level(),
            target: meta.target().to_owned(),
            message: v.message,
            fields: v.fields,
        };
        self.0
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(captured);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, "{}={value:?} ", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, "{}={value} ", field.name());
        }
    }
}

/// Installs the capturing subscriber as the global default, once. Returns whether it
/// is in place (false if another global subscriber was set first).
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        tracing_subscriber::registry()
            .with(CaptureLayer(store().clone()))
            .try_init()
            .is_ok()
    })
}

/// While alive, every event at every level is recorded.
#[derive(Debug)]
#[must_use = "events are recorded only while the Capture is alive"]
pub struct Capture {
    from: usize,
}

impl Capture {
    /// Starts recording.
    pub fn start() -> Capture {
        install();
        let s = store();
        s.active.fetch_add(1, Ordering::SeqCst);
        let from = s.events.lock().unwrap_or_else(|p| p.into_inner()).len();
        Capture { from }
    }

    /// The events recorded since this capture started (also other tasks' events).
    pub fn events(&self) -> Vec<Captured> {
        let events = store().events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .get(self.from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let s = store();
        if s.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            s.events.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

//! Progress on stderr: an indicatif bar on a terminal, plain lines otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Shows what a tool is doing while it runs.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A spinner for steps of unknown length.
    pub fn spinner(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar, quiet }
    }

    /// A bar of `total_ms` milliseconds of planned work.
    pub fn timed(total_ms: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_ms);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar, quiet }
    }

    /// Starts a step: the bar's message, or a line on stderr.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None if !self.quiet => eprintln!("{message}"),
            None => {}
        }
    }

    /// Updates the bar's message without printing a line when there is no bar.
    pub fn status(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// Advances the bar by `ms` milliseconds of work.
    pub fn advance(&self, ms: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(ms);
        }
    }

    /// Prints a line above the bar (or on stderr).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line.as_ref()),
            None if !self.quiet => eprintln!("{}", line.as_ref()),
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

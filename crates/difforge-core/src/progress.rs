//! Progress for long jobs: an indicatif bar with rate and ETA on a terminal; log lines (about
//! every 10%, through `tracing`) when the output is a pipe or a log file, so CI logs stay
//! readable.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    label: String,
    next_line: u64,
    start: Instant,
    quiet: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64, start_at: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.set_position(start_at);
            bar.reset_eta();
            bar
        });
        Progress { bar, total, label: label.to_string(), next_line: start_at + (total / 10).max(1), start: Instant::now(), quiet: false }
    }

    /// Progress nobody sees: the ranks of a data-parallel run other than rank 0, whose bars
    /// would repeat rank 0's.
    pub fn silent(label: &str, total: u64) -> Progress {
        Progress { bar: None, total, label: label.to_string(), next_line: u64::MAX, start: Instant::now(), quiet: true }
    }

    pub fn update(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg.to_string());
            }
            None if !self.quiet && (pos >= self.next_line || pos == self.total) => {
                self.next_line = pos + (self.total / 10).max(1);
                tracing::info!("{} {pos}/{} {msg} [{:.0}s]", self.label, self.total, self.start.elapsed().as_secs_f64());
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

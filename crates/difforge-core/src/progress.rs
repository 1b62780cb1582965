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
    /// Where this job started (a resumed run's first step), for its rate.
    first: u64,
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
        Progress { bar, total, label: label.to_string(), first: start_at, next_line: start_at + (total / 10).max(1), start: Instant::now(), quiet: false }
    }

    /// Progress nobody sees: the ranks of a data-parallel run other than rank 0, whose bars
    /// would repeat rank 0's.
    pub fn silent(label: &str, total: u64) -> Progress {
        Progress { bar: None, total, label: label.to_string(), first: 0, next_line: u64::MAX, start: Instant::now(), quiet: true }
    }

    pub fn update(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg.to_string());
            }
            None if !self.quiet && (pos >= self.next_line || pos == self.total) => {
                self.next_line = pos + (self.total / 10).max(1);
                let elapsed = self.start.elapsed().as_secs_f64();
                tracing::info!(
                    "{} {pos}/{} {msg} [{elapsed:.0} s, {}]",
                    self.label,
                    self.total,
                    eta(pos - self.first.min(pos), self.total - pos.min(self.total), elapsed)
                );
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

/// "ETA 1 min 5 s" from `done` units in `elapsed` seconds and `left` to go.
fn eta(done: u64, left: u64, elapsed: f64) -> String {
    if done == 0 {
        return "ETA unknown".into();
    }
    let seconds = (elapsed / done as f64 * left as f64).round() as u64;
    match seconds {
        0..60 => format!("ETA {seconds} s"),
        60..3600 => format!("ETA {} min {} s", seconds / 60, seconds % 60),
        _ => format!("ETA {} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_follows_the_rate_so_far() {
        assert_eq!(eta(10, 30, 5.0), "ETA 15 s");
        assert_eq!(eta(1, 130, 1.0), "ETA 2 min 10 s");
        assert_eq!(eta(1, 7300, 1.0), "ETA 2 h 1 min");
        assert_eq!(eta(0, 10, 3.0), "ETA unknown");
    }
}

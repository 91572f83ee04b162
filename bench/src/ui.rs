//! Progress while the suite runs: one indicatif bar over all planned runs, with the current
//! run as its message. When stderr is not a terminal (CI, `make` piped to a file) the bar is
//! hidden and every message is a plain line on stderr instead; [`Progress::quiet`] shows
//! nothing at all (tests).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of a suite run.
pub struct Progress {
    bar: ProgressBar,
    /// Print messages as plain lines (the bar is hidden).
    plain: bool,
    quiet: bool,
}

impl Progress {
    /// A bar on stderr (plain lines when stderr is not a terminal).
    pub fn stderr(total_runs: u64) -> Progress {
        let bar = ProgressBar::new(total_runs);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} runs  {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let plain = bar.is_hidden();
        if !plain {
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            plain,
            quiet: false,
        }
    }

    /// Shows nothing.
    pub fn quiet() -> Progress {
        Progress {
            bar: ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden()),
            plain: false,
            quiet: true,
        }
    }

    /// What is running now.
    pub fn start(&self, what: &str) {
        self.bar.set_message(what.to_string());
        if self.plain && !self.quiet {
            eprintln!("cutover-bench: {what}");
        }
    }

    /// A line above the bar (or on stderr).
    pub fn note(&self, line: &str) {
        if self.quiet {
            return;
        }
        if self.plain {
            eprintln!("cutover-bench: {line}");
        } else {
            self.bar.println(line);
        }
    }

    /// One run done.
    pub fn done(&self) {
        self.bar.inc(1);
    }

    /// More runs than planned (a repeated round).
    pub fn add_runs(&self, n: u64) {
        self.bar.inc_length(n);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

//! A progress bar on stderr for the long commands (eval, the sweep, bench).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr when it is a terminal (hidden otherwise); `true` when shown.
pub fn progress_bar(len: u64, what: &str) -> (ProgressBar, bool) {
    let tty = std::io::stderr().is_terminal();
    let pb = if tty { ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {what}  {{msg}}  ETA {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    (pb, tty)
}

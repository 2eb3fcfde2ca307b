//! indicatif progress bars for the trainer's phases.

use indicatif::{ProgressBar, ProgressStyle};

/// Draws one bar per phase, with ETA; hidden when stderr is not a terminal.
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl xsell_train::Progress for Bars {
    fn start(&mut self, phase: &str, total: u64) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_owned());
        self.bar = Some(bar);
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

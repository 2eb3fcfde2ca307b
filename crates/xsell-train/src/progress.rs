//! Progress reporting: the CLI draws bars, tests stay silent.

/// Receives the trainer's progress, phase by phase.
pub trait Progress {
    /// A phase starts with `total` steps.
    fn start(&mut self, phase: &str, total: u64);
    /// `n` more steps are done.
    fn advance(&mut self, n: u64);
    /// The phase is over.
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

//! Order logs in and tables out: the only crate that knows arrow and parquet.
//!
//! * [`read_log`] streams parquet order logs (a file, a directory with hive-style partitions, or
//!   a glob) record batch by record batch into the core's [`xsell_core::LogBuilder`]; columns can
//!   be renamed with a [`ColumnMap`], and every schema problem is reported with the file, the
//!   column and what was expected.
//! * [`write_lines`] writes order logs in the canonical schema (used by [`generate`]).
//! * [`tables`] reads and writes the catalog and customer tables of a model bundle.
//!
//! It is *not* where counting happens: the aggregate pass lives in `xsell_core::aggregate`.

pub mod error;
pub mod generate;
mod read;
pub mod tables;
pub mod tally;
mod write;

pub use error::{DataError, Result};
pub use read::{ColumnMap, Field, FilePlan, Source, check_embedded_arrow_schema, list_inputs, read_log, read_log_with};
pub use write::{BatchWriter, RawLine, write_lines};

#[cfg(test)]
mod tests;

/// Hands the heap pages freed so far back to the operating system. glibc keeps freed memory in
/// per-thread arenas, where other threads cannot always reuse it: after a query engine's pass or
/// a training phase freed its buffers, resident memory would stay at their peak through the
/// phases that follow. Called after each engine query and each training phase.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only returns free pages of the allocator's
        // arenas; it touches no live allocation.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// This process's resident memory in MiB now (Linux `VmRSS`; None elsewhere), for the phase
/// traces of engine passes and training.
pub fn resident_mib() -> Option<f64> {
    process_status_mib("self", "VmRSS")
}

/// A memory figure of a process (`self` or a pid) in MiB, from Linux's `/proc/<pid>/status`
/// (`key`: `VmRSS` now, `VmHWM` the peak); None elsewhere.
pub fn process_status_mib(pid: &str, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

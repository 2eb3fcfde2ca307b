//! Exposure logging: every `Rank` answer (request id, model version, customer, touchpoint,
//! offers with rank and probability) as one JSON line, for attributing later orders to what was
//! shown (`xsell eval --exposures`).
//!
//! The request path never waits on the disk: answers go into a bounded queue with `try_send`
//! and a writer thread appends them to `exposures-<time>.jsonl` under the configured
//! directory, starting a new file past `max_file_bytes`. A full queue (a disk slower than the
//! traffic) drops the record and counts it (`xsell_exposures_dropped_total`); a write error is
//! logged and counted the same way, never fatal to serving.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use xsell_proto::v1;

use crate::metrics::Metrics;

/// Settings of `[exposures]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExposureConfig {
    /// Directory of the JSON-lines files (empty: no exposure log).
    pub dir: String,
    /// A new file is started once the current one holds this many bytes.
    pub max_file_bytes: u64,
    /// Answers queued for the writer at most; more are dropped (and counted).
    pub queue: usize,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        ExposureConfig { dir: String::new(), max_file_bytes: 64 << 20, queue: 10_000 }
    }
}

/// One offer shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub item_id: String,
    /// 1-based position.
    pub rank: u32,
    pub probability: f32,
}

/// One exposure record (a line of the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Milliseconds since the Unix epoch, when the answer was made.
    pub ts_ms: i64,
    pub request_id: String,
    pub model_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The touchpoint's policy name (`unspecified`, `cart`, …).
    pub touchpoint: String,
    pub offers: Vec<Offer>,
    /// Why every offer was withheld, when it was (`return_risk`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
}

impl Exposure {
    pub fn of(customer_id: Option<&str>, touchpoint: &str, resp: &v1::RankResponse) -> Self {
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let suppression = v1::Suppression::try_from(resp.suppression).unwrap_or(v1::Suppression::None);
        Exposure {
            ts_ms,
            request_id: resp.request_id.clone(),
            model_version: resp.model_version.clone(),
            customer_id: customer_id.filter(|c| !c.is_empty()).map(str::to_owned),
            touchpoint: touchpoint.to_owned(),
            offers: resp
                .items
                .iter()
                .enumerate()
                .map(|(r, i)| Offer { item_id: i.item_id.clone(), rank: r as u32 + 1, probability: i.probability })
                .collect(),
            suppressed: (suppression != v1::Suppression::None)
                .then(|| suppression.as_str_name().trim_start_matches("SUPPRESSION_").to_ascii_lowercase()),
        }
    }
}

/// The request path's end of the log.
#[derive(Debug, Clone)]
pub struct ExposureLog {
    tx: SyncSender<Exposure>,
    metrics: Arc<Metrics>,
}

impl ExposureLog {
    /// Starts the writer thread; `None` when `cfg.dir` is empty. The directory is created now,
    /// so a path that cannot be written fails at startup, not on the first answer.
    pub fn start(cfg: &ExposureConfig, metrics: Arc<Metrics>) -> std::io::Result<Option<Self>> {
        if cfg.dir.is_empty() {
            return Ok(None);
        }
        let dir = PathBuf::from(&cfg.dir);
        xsell_model::check_writable(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        let (tx, rx) = sync_channel(cfg.queue.max(1));
        let (max_bytes, m) = (cfg.max_file_bytes.max(1), metrics.clone());
        std::thread::Builder::new().name("xsell-exposures".into()).spawn(move || write_loop(&dir, max_bytes, &rx, &m))?;
        Ok(Some(ExposureLog { tx, metrics }))
    }

    /// Queues one record; never blocks (a full queue drops it and counts the drop).
    pub fn record(&self, e: Exposure) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(e) {
            self.metrics.exposures_dropped.inc();
        }
    }
}

/// The file of records written from now on.
fn new_file(dir: &std::path::Path) -> std::io::Result<(std::io::BufWriter<std::fs::File>, u64)> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let path = dir.join(format!("exposures-{}-{:09}.jsonl", now.as_secs(), now.subsec_nanos()));
    let f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    tracing::info!(path = %path.display(), "exposure log file started");
    Ok((std::io::BufWriter::new(f), 0))
}

fn write_loop(dir: &std::path::Path, max_bytes: u64, rx: &Receiver<Exposure>, metrics: &Metrics) {
    let mut current: Option<(std::io::BufWriter<std::fs::File>, u64)> = None;
    loop {
        // flush within a second of the last record; end when every sender has gone
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => e,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some((w, _)) = current.as_mut()
                    && let Err(e) = w.flush()
                {
                    tracing::warn!(error = %e, "exposure log flush failed");
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for e in std::iter::once(first).chain(rx.try_iter()) {
            let mut line = match serde_json::to_vec(&e) {
                Ok(l) => l,
                Err(_) => continue,
            };
            line.push(b'\n');
            if current.as_ref().is_none_or(|(_, n)| *n >= max_bytes) {
                if let Some((mut w, _)) = current.take() {
                    let _ = w.flush();
                }
                match new_file(dir) {
                    Ok(f) => current = Some(f),
                    Err(err) => {
                        tracing::warn!(error = %err, dir = %dir.display(), "exposure log file cannot be opened");
                        metrics.exposures_dropped.inc();
                        continue;
                    }
                }
            }
            if let Some((w, n)) = current.as_mut() {
                match w.write_all(&line) {
                    Ok(()) => {
                        *n += line.len() as u64;
                        metrics.exposures_written.inc();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "exposure log write failed");
                        metrics.exposures_dropped.inc();
                        current = None;
                    }
                }
            }
        }
    }
    if let Some((mut w, _)) = current {
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(i: usize) -> Exposure {
        Exposure {
            ts_ms: i as i64,
            request_id: format!("r{i}"),
            model_version: "v".into(),
            customer_id: Some("c".into()),
            touchpoint: "cart".into(),
            offers: vec![Offer { item_id: "a".into(), rank: 1, probability: 0.5 }],
            suppressed: None,
        }
    }

    #[test]
    fn records_roll_over_files_and_a_full_queue_drops_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let cfg = ExposureConfig { dir: dir.path().to_string_lossy().into_owned(), max_file_bytes: 1000, queue: 100_000 };
        let log = ExposureLog::start(&cfg, metrics.clone()).unwrap().unwrap();
        for i in 0..200 {
            log.record(exposure(i));
        }
        drop(log);
        // the writer ends once the queue is drained and the sender gone
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.exposures_written.get() < 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut lines = Vec::new();
        let mut files = 0;
        for f in std::fs::read_dir(dir.path()).unwrap() {
            files += 1;
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            lines.extend(text.lines().map(|l| serde_json::from_str::<Exposure>(l).unwrap()));
        }
        assert_eq!(lines.len(), 200);
        assert!(files > 3, "{files} files for ~20 KB at 1 KB each");
        lines.sort_by_key(|e| e.ts_ms);
        assert_eq!(lines[7], exposure(7));

        // a queue of one, records faster than any disk: some are dropped, none blocks
        let metrics = Arc::new(Metrics::default());
        let log = ExposureLog::start(&ExposureConfig { queue: 1, ..cfg }, metrics.clone()).unwrap().unwrap();
        for i in 0..10_000 {
            log.record(exposure(i));
        }
        assert!(metrics.exposures_dropped.get() > 0);
        let bad = ExposureConfig { dir: "/proc/no-such-dir/x".into(), ..ExposureConfig::default() };
        assert!(ExposureLog::start(&bad, metrics).is_err());
    }
}

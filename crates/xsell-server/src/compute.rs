//! The ranking pools: ranking is CPU work, so it runs on fixed sets of rayon threads (an
//! interactive lane and a bulk lane), never on the async I/O threads that answer health checks
//! and move bytes.
//!
//! Admission is a semaphore of `max_in_flight` permits taken before a job is queued: when it is
//! empty the call is shed at once (RESOURCE_EXHAUSTED), so the queue in front of the pools is
//! bounded. A call with a deadline is also shed at once when the work queued ahead of it (priced in
//! work units at the measured cost of a unit) means it could not finish in time. A job learns that its caller is gone (deadline passed, client cancelled or
//! disconnected: tonic drops the call's future, which closes the answer channel) through
//! [`Cancel`], checked before the job starts and between the requests of a batch.
//!
//! On a quiet server neither side of the hand-off sleeps at once: the I/O task polls for the
//! job's answer ([`poll_answer`]) and an interactive thread that finished a job looks for the
//! next one ([`linger`]), each for `compute_linger_us`, so a lone caller's request crosses
//! to the pool and back without a thread wake-up.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic::Status;

use crate::metrics::Metrics;

/// What a running job checks to learn that nobody waits for its answer any more.
pub struct Cancel<'a> {
    deadline: Option<Instant>,
    closed: &'a dyn Fn() -> bool,
}

impl Cancel<'_> {
    /// The caller's deadline passed or the caller went away.
    pub fn is_cancelled(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d) || (self.closed)()
    }

    /// [`Cancel::is_cancelled`] as a status, for `?` in a job.
    pub fn check(&self) -> Result<(), Status> {
        if self.is_cancelled() { Err(gone()) } else { Ok(()) }
    }
}

/// The status of work nobody waits for.
fn gone() -> Status {
    Status::deadline_exceeded("the call's deadline passed or its client went away")
}

/// Which pool a job runs on. Bulk work (batches, very large requests) has its own threads, so
/// a small `Rank` never waits behind a batch of thousands: the operating system shares the cores
/// between the lanes, and a woken interactive thread is scheduled at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Single requests and stream messages.
    Interactive,
    /// `RankBatch` calls and requests over `limits.bulk_request_work`.
    Bulk,
}

impl Lane {
    /// The lane's metric label.
    fn label(self) -> crate::metrics::LaneLabel {
        let lane = match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        };
        crate::metrics::LaneLabel { lane }
    }
}

#[derive(Debug)]
struct Pool {
    pool: rayon::ThreadPool,
    threads: usize,
    /// Work units admitted to this pool and not finished yet.
    queued: Arc<AtomicU64>,
    /// How long a thread that finished a job keeps looking for the next one ([`linger`]).
    linger: Duration,
}

/// The scheduling niceness of the bulk lane's threads (Linux), which also run in the idle
/// scheduling class (`SCHED_IDLE`): under contention the kernel gives a bulk thread a sliver of
/// a core against any normal thread (the interactive lane, the I/O threads, other processes) and
/// lets a woken interactive thread preempt it at once, so a batch running on every core still
/// leaves small calls their latency; on an idle machine the bulk lane runs at full speed. (Niceness
/// alone, weights 110 against 1024, left small `Rank`s a p50 of 3.7 ms under two maximal batches
/// against 0.65 ms idle; with the idle class, 0.57–0.79 ms.)
pub const BULK_NICE: i32 = 10;

impl Pool {
    fn new(name: &'static str, threads: usize, nice: i32, linger: Duration, slice: Duration) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("xsell-{name}-{i}"))
            .start_handler(move |_| {
                lower_priority(nice);
                shorten_slice(slice);
            })
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Pool { pool, threads, queued: Arc::new(AtomicU64::new(0)), linger })
    }
}

/// Asks the scheduler (Linux 6.12 and later, EEVDF) for a time slice of `slice` for the calling
/// thread, at its normal priority (zero: leaves the default, ~3 ms). A thread with a shorter
/// slice gets an earlier deadline when it wakes, so it preempts the running threads sooner;
/// under two maximal batches and a health-check load the interactive lane's jobs waited for a
/// core up to ~5 ms with the default slice (small `Rank` p99 4.45–4.94 ms) and ~3 ms with 100 µs
/// (3.16–3.26 ms). Best effort: older kernels ignore the slice, and a refusal is logged.
fn shorten_slice(slice: Duration) {
    if slice.is_zero() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = set_slice(slice.as_nanos().min(u128::from(u64::MAX)) as u64) {
        tracing::warn!(%error, "could not shorten a ranking thread's time slice");
    }
}

/// A `sched_attr` of the normal policy at niceness 0 with a time slice of `ns` nanoseconds.
#[cfg(target_os = "linux")]
fn slice_attr(ns: u64) -> libc::sched_attr {
    libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: ns,
        sched_deadline: 0,
        sched_period: 0,
    }
}

/// Sets the calling thread's time slice to `ns` nanoseconds ([`shorten_slice`]).
#[cfg(target_os = "linux")]
fn set_slice(ns: u64) -> std::io::Result<()> {
    let attr = slice_attr(ns);
    // SAFETY: `attr` is a valid sched_attr on the stack whose `size` field is its size; pid 0 is
    // the calling thread, flags 0.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const libc::sched_attr, 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Sets the calling thread's niceness to `nice` and puts it in the idle scheduling class (0:
/// leaves it). Best effort: a refusal is logged and the thread runs at the normal priority.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; PRIO_PROCESS with a thread id sets the
        // niceness of that thread alone (Linux threads are scheduled one by one).
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "could not lower a bulk thread's priority");
        }
        // SAFETY: the parameter is a valid sched_param on the stack; pid 0 is the calling thread.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 }) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not put a bulk thread in the idle scheduling class");
        }
    }
}

/// The pools and their admission control.
#[derive(Debug)]
pub struct Compute {
    interactive: Pool,
    bulk: Pool,
    admission: Arc<Semaphore>,
    max_in_flight: usize,
    /// Measured nanoseconds per work unit (an f64's bits; 0 until the first job), for
    /// deadline-aware shedding.
    ns_per_unit: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

/// How a call waits for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Shed at once when the pool is full, or when the queue ahead of the call means it cannot
    /// finish before its deadline (unary calls: the client retries elsewhere).
    Shed,
    /// Wait for a permit (a stream's next message: the stream itself is the back-pressure).
    Wait,
}

impl Compute {
    /// Pools of `threads` interactive and `bulk_threads` bulk threads admitting `max_in_flight`
    /// jobs at once; on a quiet server, an interactive job's answer is polled for and its thread
    /// lingers after it, each for up to `linger` ([`poll_answer`], [`linger`]); interactive threads
    /// ask for a time slice of `slice` ([`shorten_slice`]).
    pub fn new(
        threads: usize,
        bulk_threads: usize,
        max_in_flight: usize,
        (linger, slice): (Duration, Duration),
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Ok(Compute {
            interactive: Pool::new("rank", threads, 0, linger, slice)?,
            bulk: Pool::new("bulk", bulk_threads, BULK_NICE, Duration::ZERO, Duration::ZERO)?,
            admission: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            ns_per_unit: Arc::new(AtomicU64::new(0)),
            metrics,
        })
    }

    fn shed(&self, why: String) -> Status {
        self.metrics.shed.inc();
        Status::resource_exhausted(why)
    }

    /// Runs `job` (estimated at `units` work units) on `lane` and awaits its answer. Dropping the
    /// returned future (the client went away) lets the job notice through its [`Cancel`]; a job
    /// not yet started is skipped.
    pub async fn run<T, F>(&self, lane: Lane, admission: Admission, deadline: Option<Instant>, units: u64, job: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Cancel<'_>) -> Result<T, Status> + Send + 'static,
    {
        let permit: OwnedSemaphorePermit = match admission {
            Admission::Shed => self.admission.clone().try_acquire_owned().map_err(|_| {
                self.shed(format!("server busy: {} ranking calls in flight (max_in_flight); retry with back-off", self.max_in_flight))
            })?,
            Admission::Wait => {
                self.admission.clone().acquire_owned().await.map_err(|_| Status::unavailable("the ranking pool is closed"))?
            }
        };
        let pool = match lane {
            Lane::Interactive => &self.interactive,
            Lane::Bulk => &self.bulk,
        };
        let ns = f64::from_bits(self.ns_per_unit.load(Ordering::Relaxed));
        if let (Admission::Shed, Some(d)) = (admission, deadline) {
            let ahead = pool.queued.load(Ordering::Relaxed) as f64 / pool.threads as f64;
            let wait = Duration::from_secs_f64(((ahead + units as f64) * ns * 1e-9).min(1e6));
            if Instant::now() + wait > d {
                return Err(self.shed(format!(
                    "server busy: this call would not finish before its deadline (about {:.0} ms of ranking queued ahead of it and in it)",
                    wait.as_secs_f64() * 1e3
                )));
            }
        }
        let queued = QueuedUnits::new(pool, units);
        let (tx, mut rx) = oneshot::channel::<Result<T, Status>>();
        let metrics = self.metrics.clone();
        let ns_per_unit = self.ns_per_unit.clone();
        let admitted = Instant::now();
        let (window, pool_queued) = (pool.linger, pool.queued.clone());
        // quiet: no other work on the pool (`others`: its work units beside this job's) and no
        // other call in flight; under concurrency the cores have other calls' transport and
        // ranking to run, and a polling thread would take its share of them
        let quiet = move |m: &Metrics, others: u64| !window.is_zero() && others == 0 && m.calls_in_flight.get() <= 1;
        pool.pool.spawn(move || {
            let out = {
                let closed = || tx.is_closed();
                let cancel = Cancel { deadline, closed: &closed };
                if cancel.is_cancelled() {
                    metrics.abandoned.inc();
                    Err(gone())
                } else {
                    metrics.jobs_running.inc();
                    let started = Instant::now();
                    let out = job(&cancel);
                    metrics.jobs_running.dec();
                    metrics.job_wait.get_or_create(&lane.label()).observe((started - admitted).as_secs_f64());
                    metrics.job_run.get_or_create(&lane.label()).observe(started.elapsed().as_secs_f64());
                    if cancel.is_cancelled() {
                        metrics.abandoned.inc();
                    } else if units > 0 {
                        // moving average of the cost of a unit of work
                        let sample = started.elapsed().as_nanos() as f64 / units as f64;
                        let old = f64::from_bits(ns_per_unit.load(Ordering::Relaxed));
                        let new = if old == 0.0 { sample } else { 0.9 * old + 0.1 * sample };
                        ns_per_unit.store(new.to_bits(), Ordering::Relaxed);
                    }
                    out
                }
            };
            let _ = tx.send(out);
            // the job is over for admission and the queue before the thread lingers
            drop(permit);
            drop(queued);
            if quiet(&metrics, pool_queued.load(Ordering::Relaxed)) {
                linger(window);
            }
        });
        if quiet(&self.metrics, pool.queued.load(Ordering::Relaxed).saturating_sub(units))
            && let Some(out) = poll_answer(&mut rx, window).await
        {
            return out;
        }
        rx.await.map_err(|_| Status::internal("the ranking job ended without an answer"))?
    }
}

thread_local! {
    /// Whether this pool thread is lingering now (a job it runs meanwhile does not linger again).
    static LINGERING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps a pool thread that finished a job looking for the next one until `window` has passed
/// since the last job it ran, yielding its core to any other runnable thread between looks, and
/// then lets it sleep. A job found meanwhile runs at once on this thread, without the wake-up of
/// a sleeping one (a futex wake and, on a VM, an idle virtual CPU's return) or the cold caches
/// of a core that went idle: at one caller that was 70–86 µs of a `Rank`'s ~0.3–0.4 ms over gRPC.
/// A thread lingers only on a quiet server (its call the only one in flight, nothing else on
/// the pool); an idle server's threads sleep after one window.
fn linger(window: Duration) {
    if window.is_zero() || LINGERING.with(|l| l.replace(true)) {
        return;
    }
    let mut last = Instant::now();
    while last.elapsed() < window {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last = Instant::now(),
            _ => std::thread::yield_now(),
        }
    }
    LINGERING.with(|l| l.set(false));
}

/// Polls `rx` for a job's answer until `window` has passed, yielding to the runtime's other
/// tasks between polls instead of parking the I/O thread, so the answer is taken up without the
/// wake-up of a parked runtime thread (with [`linger`], a lone caller's `Rank` over gRPC took
/// ~50 µs less). None: no answer yet (or the job is gone); the caller then awaits it.
async fn poll_answer<T>(rx: &mut oneshot::Receiver<T>, window: Duration) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < window {
        match rx.try_recv() {
            Ok(out) => return Some(out),
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
        }
    }
    None
}

/// Work units counted as queued on a pool while alive.
struct QueuedUnits {
    queued: Arc<AtomicU64>,
    units: u64,
}

impl QueuedUnits {
    fn new(pool: &Pool, units: u64) -> Self {
        pool.queued.fetch_add(units, Ordering::Relaxed);
        QueuedUnits { queued: pool.queued.clone(), units }
    }
}

impl Drop for QueuedUnits {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.units, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thread_lingers_after_a_job_and_runs_the_next_one_itself() {
        let lingering = |window, other_calls: i64| async move {
            let metrics = Arc::new(Metrics::new());
            metrics.calls_in_flight.set(1 + other_calls);
            let compute = Compute::new(1, 1, 4, (window, Duration::ZERO), metrics).unwrap();
            let on = |lane| compute.run(lane, Admission::Wait, None, 1, |_| Ok(LINGERING.with(Cell::get)));
            assert!(!on(Lane::Interactive).await.unwrap(), "the first job finds a sleeping thread");
            (on(Lane::Interactive).await.unwrap(), on(Lane::Bulk).await.unwrap())
        };
        // the next job comes well within the window: the lingering thread runs it
        assert_eq!(lingering(Duration::from_secs(1), 0).await, (true, false), "(interactive, bulk: never lingers)");
        assert_eq!(lingering(Duration::ZERO, 0).await, (false, false), "no window: the thread sleeps between jobs");
        assert_eq!(lingering(Duration::from_secs(1), 1).await, (false, false), "another call in flight: no lingering");
    }

    #[tokio::test]
    async fn polling_takes_an_answer_that_comes_within_the_window_and_gives_up_otherwise() {
        let (tx, mut rx) = oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7)
        });
        assert_eq!(poll_answer(&mut rx, Duration::from_secs(5)).await, Some(7));
        let (tx, mut rx) = oneshot::channel::<i32>();
        assert_eq!(poll_answer(&mut rx, Duration::from_millis(20)).await, None, "no answer within the window");
        drop(tx);
        let started = Instant::now();
        assert_eq!(poll_answer(&mut rx, Duration::from_secs(5)).await, None, "the job is gone");
        assert!(started.elapsed() < Duration::from_secs(5), "a closed channel ends the polling at once");
    }

    /// The calling thread's scheduling policy and niceness.
    #[cfg(target_os = "linux")]
    fn scheduling() -> (i32, i32) {
        // SAFETY: neither call takes a pointer; pid 0 and PRIO_PROCESS with the thread id name
        // the calling thread.
        #[allow(unsafe_code)]
        unsafe {
            (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t))
        }
    }

    /// The calling thread's time slice as the kernel reports it (ns).
    #[cfg(target_os = "linux")]
    fn slice_ns() -> u64 {
        let mut attr = slice_attr(0);
        // SAFETY: `attr` is a writable sched_attr and its size is passed; pid 0 is the calling
        // thread.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut libc::sched_attr, std::mem::size_of::<libc::sched_attr>(), 0)
        };
        assert_eq!(rc, 0, "sched_getattr: {}", std::io::Error::last_os_error());
        attr.sched_runtime
    }

    /// Whether the running kernel has custom time slices for normal threads (Linux 6.12).
    #[cfg(target_os = "linux")]
    fn custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 12)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn interactive_threads_ask_for_a_short_time_slice() {
        // a probe on a thread of its own: a kernel or sandbox that refuses the call has nothing to check
        let allowed = std::thread::spawn(|| set_slice(200_000).is_ok() && slice_ns() == 200_000).join().unwrap();
        if !custom_slices() || !allowed {
            eprintln!("this kernel has no custom time slices, or they are refused here: nothing to check");
            return;
        }
        let compute = Compute::new(1, 1, 4, (Duration::ZERO, Duration::from_micros(100)), Arc::new(Metrics::new())).unwrap();
        let on = |lane| compute.run(lane, Admission::Wait, None, 1, |_| Ok(slice_ns()));
        assert_eq!(on(Lane::Interactive).await.unwrap(), 100_000, "the interactive lane's slice");
        assert_ne!(on(Lane::Bulk).await.unwrap(), 100_000, "the bulk lane keeps the default");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bulk_jobs_run_in_the_idle_class_and_interactive_ones_do_not() {
        let compute = Compute::new(1, 1, 4, (Duration::ZERO, Duration::ZERO), Arc::new(Metrics::new())).unwrap();
        let on = |lane| compute.run(lane, Admission::Wait, None, 1, |_| Ok(scheduling()));
        let (policy, nice) = on(Lane::Bulk).await.unwrap();
        assert_eq!(policy, libc::SCHED_IDLE, "the bulk lane's threads");
        assert!(nice >= BULK_NICE, "the bulk lane's threads run at niceness {nice}");
        let (policy, _) = on(Lane::Interactive).await.unwrap();
        assert_eq!(policy, libc::SCHED_OTHER, "the interactive lane's threads");
    }
}

//! The `CrossSell` service: admission and budgets on the I/O thread, ranking on the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use xsell_core::Policies;
use xsell_proto::v1;
use xsell_proto::v1::cross_sell_server::CrossSell;

use crate::compute::{Admission, Cancel, Compute, Lane};
use crate::config::Limits;
use crate::exposure::{Exposure, ExposureLog};
use crate::metrics::Metrics;
use crate::store::Served;
use crate::{ModelStore, convert};

/// Longest caller-chosen `request_id`, in bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// Implements `xsell.v1.CrossSell` over a [`ModelStore`].
#[derive(Debug, Clone)]
pub struct CrossSellService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<ModelStore>,
    compute: Compute,
    metrics: Arc<Metrics>,
    limits: Limits,
    answers: Answers,
    read_ahead: usize,
    /// Becomes true when the shutdown grace period is over: open streams end.
    close_streams: watch::Receiver<bool>,
    next_id: AtomicU64,
    boot: u64,
}

/// What shapes and records the answers: the business rules per touchpoint (configuration, not
/// the bundle) and the exposure log.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    pub(crate) policies: Policies,
    pub(crate) exposures: Option<ExposureLog>,
}

/// Counts a call in flight while alive.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.calls_in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.calls_in_flight.dec();
    }
}

/// The deadline a client set with `grpc-timeout` (tonic also drops the call's future then; the
/// ranking pool and streams check it themselves).
fn deadline(meta: &MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

fn code<T>(r: &Result<T, Status>) -> Code {
    r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok)
}

/// A request checked on the I/O thread: valid id and fields, within the work budget, as its id
/// and the query its fields became.
struct Checked {
    request_id: String,
    query: xsell_core::RankQuery,
    work: u64,
}

impl CrossSellService {
    /// A service over a store, ranking on `compute`.
    pub(crate) fn new(
        store: Arc<ModelStore>,
        compute: Compute,
        metrics: Arc<Metrics>,
        limits: Limits,
        answers: Answers,
        read_ahead: usize,
        close_streams: watch::Receiver<bool>,
    ) -> Self {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        CrossSellService {
            inner: Arc::new(Inner {
                store,
                compute,
                metrics,
                limits,
                answers,
                read_ahead,
                close_streams,
                next_id: AtomicU64::new(1),
                boot,
            }),
        }
    }
}

impl Inner {
    fn model(&self) -> Result<Arc<Served>, Status> {
        self.store.current().ok_or_else(|| Status::unavailable("no model is loaded yet; retry once health reports SERVING"))
    }

    /// Cheap checks that need no ranking: the request id, the fields (`convert::query`) and the
    /// work budget.
    fn check(&self, served: &Served, mut req: v1::RankRequest) -> Result<Checked, Status> {
        if req.request_id.len() > MAX_REQUEST_ID {
            return Err(Status::invalid_argument(format!(
                "request_id is {} bytes long, at most {MAX_REQUEST_ID} are accepted",
                req.request_id.len()
            )));
        }
        if req.request_id.chars().any(char::is_control) {
            return Err(Status::invalid_argument("request_id holds control characters"));
        }
        let work = served.bundle.model.request_work(req.basket.len(), req.candidates.len());
        if work > self.limits.max_request_work {
            return Err(Status::resource_exhausted(format!(
                "the request costs {work} work units (candidates × (basket items + 16) + basket items × 1024), over limits.max_request_work = {}; send a smaller basket or allow-list",
                self.limits.max_request_work
            )));
        }
        // the fields' checks run here too, so a bad request never takes a pool slot and a batch
        // with one fails before any of it is ranked
        let request_id = std::mem::take(&mut req.request_id);
        let query = convert::query(req)?;
        Ok(Checked { request_id, query, work })
    }

    /// Ranks one checked request (on the pool).
    fn rank_one(&self, served: &Served, checked: Checked) -> Result<v1::RankResponse, Status> {
        let Checked { request_id, query, .. } = checked;
        let request_id = self.request_id(request_id);
        let ranking = served.bundle.model.rank_with(&query, &self.answers.policies).map_err(convert::core_status)?;
        let resp = convert::response(&served.bundle, ranking, request_id);
        self.metrics.ranked.inc();
        if let Some(log) = &self.answers.exposures {
            log.record(Exposure::of(query.customer_id.as_deref(), query.touchpoint.key(), &resp));
        }
        tracing::debug!(request_id = ?resp.request_id, model_version = %resp.model_version, offers = resp.items.len(), "ranked");
        Ok(resp)
    }

    async fn rank(
        self: &Arc<Self>,
        req: v1::RankRequest,
        admission: Admission,
        deadline: Option<Instant>,
    ) -> Result<v1::RankResponse, Status> {
        let served = self.model()?;
        let checked = self.check(&served, req)?;
        let (work, this) = (checked.work, self.clone());
        let lane = if work > self.limits.bulk_request_work { Lane::Bulk } else { Lane::Interactive };
        self.compute.run(lane, admission, deadline, work, move |_| this.rank_one(&served, checked)).await
    }

    async fn bundle(self: &Arc<Self>, req: v1::BundleRequest, deadline: Option<Instant>) -> Result<v1::BundleResponse, Status> {
        let served = self.model()?;
        let size = if req.size == 0 { 3 } else { req.size as usize };
        if size > xsell_core::bundle::MAX_BUNDLE {
            return Err(Status::invalid_argument(format!("size must be between 1 and {}, got {size}", xsell_core::bundle::MAX_BUNDLE)));
        }
        // the discount is checked with the bundle (CrossSellModel::bundle_with)
        let discount = req.discount;
        // the request's own k is not used: a bundle ranks a short list per item
        let inner = v1::RankRequest { k: 10, ..req.request.unwrap_or_default() };
        let checked = self.check(&served, inner)?;
        let (work, this) = (checked.work.saturating_mul(size as u64), self.clone());
        if work > self.limits.max_request_work {
            return Err(Status::resource_exhausted(format!(
                "the bundle costs {work} work units ({size} rankings), over limits.max_request_work = {}; send a smaller basket or size",
                self.limits.max_request_work
            )));
        }
        self.compute
            .run(Lane::Interactive, Admission::Shed, deadline, work, move |_| this.bundle_one(&served, checked, size, discount))
            .await
    }

    /// Builds one bundle (on the pool).
    fn bundle_one(&self, served: &Served, checked: Checked, size: usize, discount: f32) -> Result<v1::BundleResponse, Status> {
        let Checked { request_id, query, .. } = checked;
        let request_id = self.request_id(request_id);
        let b = served.bundle.model.bundle_with(&query, size, discount, &self.answers.policies).map_err(convert::core_status)?;
        let items = convert::response(&served.bundle, b.ranking, request_id);
        if let Some(log) = &self.answers.exposures {
            log.record(Exposure::of(query.customer_id.as_deref(), query.touchpoint.key(), &items));
        }
        Ok(v1::BundleResponse {
            items: Some(items),
            probability: b.probability,
            price: b.price,
            discounted_price: b.discounted_price,
            expected_value: b.expected_value,
        })
    }

    /// The caller's request id, or a new one.
    fn request_id(&self, given: String) -> String {
        if given.is_empty() { format!("{:x}-{:x}", self.boot, self.next_id.fetch_add(1, Ordering::Relaxed)) } else { given }
    }

    async fn rank_batch(
        self: &Arc<Self>,
        requests: Vec<v1::RankRequest>,
        deadline: Option<Instant>,
    ) -> Result<v1::RankBatchResponse, Status> {
        let l = &self.limits;
        if requests.len() > l.max_batch {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {} requests (limits.max_batch), got {}",
                l.max_batch,
                requests.len()
            )));
        }
        let offers: u64 = requests.iter().map(|r| u64::from(r.k)).sum();
        if offers > l.max_batch_offers as u64 {
            return Err(Status::resource_exhausted(format!(
                "the batch asks for {offers} offers in all (the sum of its k), over limits.max_batch_offers = {}; split it",
                l.max_batch_offers
            )));
        }
        let served = self.model()?;
        let checked =
            requests.into_iter().enumerate().map(|(k, r)| self.check(&served, r).map_err(|s| at(k, s))).collect::<Result<Vec<_>, _>>()?;
        let work: u64 = checked.iter().map(|c| c.work).sum();
        if work > l.max_batch_work {
            return Err(Status::resource_exhausted(format!(
                "the batch costs {work} work units, over limits.max_batch_work = {}; split it or send smaller baskets",
                l.max_batch_work
            )));
        }
        let this = self.clone();
        let job = move |cancel: &Cancel<'_>| {
            let mut responses = Vec::with_capacity(checked.len());
            for (k, c) in checked.into_iter().enumerate() {
                // the deadline and the client are checked between requests, so abandoned
                // batches stop early and free the worker
                cancel.check()?;
                responses.push(this.rank_one(&served, c).map_err(|s| at(k, s))?);
            }
            Ok(v1::RankBatchResponse { responses })
        };
        self.compute.run(Lane::Bulk, Admission::Shed, deadline, work, job).await
    }
}

/// Completes when the shutdown grace period is over (never, if the server is gone without one).
async fn closing(close: &mut watch::Receiver<bool>) {
    if close.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A batch member's error, naming its index.
fn at(k: usize, s: Status) -> Status {
    Status::new(s.code(), format!("request {k}: {}", s.message()))
}

type RankStream = Pin<Box<dyn Stream<Item = Result<v1::RankResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CrossSell for CrossSellService {
    async fn rank(&self, request: Request<v1::RankRequest>) -> Result<Response<v1::RankResponse>, Status> {
        let (started, m) = (Instant::now(), &self.inner.metrics);
        let _g = InFlight::new(m);
        let deadline = deadline(request.metadata());
        let out = self.inner.rank(request.into_inner(), Admission::Shed, deadline).await;
        m.record("Rank", code(&out), started);
        out.map(Response::new)
    }

    async fn rank_batch(&self, request: Request<v1::RankBatchRequest>) -> Result<Response<v1::RankBatchResponse>, Status> {
        let (started, m) = (Instant::now(), &self.inner.metrics);
        let _g = InFlight::new(m);
        let deadline = deadline(request.metadata());
        let out = self.inner.rank_batch(request.into_inner().requests, deadline).await;
        m.record("RankBatch", code(&out), started);
        out.map(Response::new)
    }

    type RankStreamStream = RankStream;

    async fn rank_stream(&self, request: Request<Streaming<v1::RankRequest>>) -> Result<Response<RankStream>, Status> {
        let deadline = deadline(request.metadata());
        let mut input = request.into_inner();
        let inner = self.inner.clone();
        // The reader drains the transport ahead of ranking (bounded), so a fast client's small
        // frames are consumed instead of piling up against HTTP/2's anti-flood budget.
        let (in_tx, mut in_rx) = mpsc::channel::<Result<v1::RankRequest, Status>>(inner.read_ahead);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = input.next() => m,
                    _ = in_tx.closed() => break,
                };
                let Some(msg) = msg else { break };
                if in_tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel::<Result<v1::RankResponse, Status>>(64);
        tokio::spawn(async move {
            let mut close = inner.close_streams.clone();
            loop {
                let msg = tokio::select! {
                    m = in_rx.recv() => m,
                    _ = closing(&mut close) => {
                        let _ = out_tx.send(Err(Status::unavailable("the server is shutting down; reconnect"))).await;
                        break;
                    }
                };
                let Some(msg) = msg else { break };
                let started = Instant::now();
                let out = match msg {
                    Err(status) => Err(status),
                    Ok(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                        inner.metrics.abandoned.inc();
                        Err(Status::deadline_exceeded("the stream's deadline passed"))
                    }
                    Ok(req) => inner.rank(req, Admission::Wait, deadline).await,
                };
                inner.metrics.record("RankStream", code(&out), started);
                let last = out.is_err();
                if out_tx.send(out).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }

    async fn bundle(&self, request: Request<v1::BundleRequest>) -> Result<Response<v1::BundleResponse>, Status> {
        let (started, m) = (Instant::now(), &self.inner.metrics);
        let _g = InFlight::new(m);
        let deadline = deadline(request.metadata());
        let out = self.inner.bundle(request.into_inner(), deadline).await;
        m.record("Bundle", code(&out), started);
        out.map(Response::new)
    }

    async fn model_info(&self, _: Request<v1::ModelInfoRequest>) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let started = Instant::now();
        let out = self.inner.model().map(|s| convert::model_info(&s.bundle));
        self.inner.metrics.record("ModelInfo", code(&out), started);
        out.map(Response::new)
    }
}

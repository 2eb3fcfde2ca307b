//! The `CrossSell` service.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use xsell_proto::v1;
use xsell_proto::v1::cross_sell_server::CrossSell;

use crate::ModelStore;
use crate::convert;

/// Most requests in one `RankBatch` call.
pub const MAX_BATCH: usize = 10_000;

/// Implements `xsell.v1.CrossSell` over a [`ModelStore`].
#[derive(Debug)]
pub struct CrossSellService {
    store: Arc<ModelStore>,
    next_id: AtomicU64,
    boot: u64,
}

impl CrossSellService {
    /// A service over a store.
    pub fn new(store: Arc<ModelStore>) -> Self {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        CrossSellService { store, next_id: AtomicU64::new(1), boot }
    }

    fn rank_one(&self, req: &v1::RankRequest) -> Result<v1::RankResponse, Status> {
        let query = convert::query(req)?;
        let request_id = if req.request_id.is_empty() {
            format!("{:x}-{:x}", self.boot, self.next_id.fetch_add(1, Ordering::Relaxed))
        } else {
            req.request_id.clone()
        };
        let bundle = self.store.current();
        let ranking = bundle.model.rank(&query).map_err(convert::core_status)?;
        let resp = convert::response(&bundle, ranking, request_id);
        // every offer shown is logged so conversions can be attributed later
        tracing::info!(
            request_id = %resp.request_id,
            model_version = %resp.model_version,
            offers = ?resp.items.iter().map(|i| (i.item_id.as_str(), i.probability)).collect::<Vec<_>>(),
            "ranked"
        );
        Ok(resp)
    }
}

type RankStream = Pin<Box<dyn Stream<Item = Result<v1::RankResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CrossSell for CrossSellService {
    async fn rank(&self, request: Request<v1::RankRequest>) -> Result<Response<v1::RankResponse>, Status> {
        self.rank_one(request.get_ref()).map(Response::new)
    }

    async fn rank_batch(&self, request: Request<v1::RankBatchRequest>) -> Result<Response<v1::RankBatchResponse>, Status> {
        let requests = &request.get_ref().requests;
        if requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("a batch holds at most {MAX_BATCH} requests, got {}", requests.len())));
        }
        let responses = requests
            .iter()
            .enumerate()
            .map(|(k, r)| self.rank_one(r).map_err(|s| Status::new(s.code(), format!("request {k}: {}", s.message()))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(v1::RankBatchResponse { responses }))
    }

    type RankStreamStream = RankStream;

    async fn rank_stream(&self, request: Request<Streaming<v1::RankRequest>>) -> Result<Response<RankStream>, Status> {
        let mut input = request.into_inner();
        let this = CrossSellService {
            store: self.store.clone(),
            next_id: AtomicU64::new(self.next_id.fetch_add(1 << 32, Ordering::Relaxed)),
            boot: self.boot,
        };
        let output = async_stream(move |tx| async move {
            while let Some(req) = input.next().await {
                let resp = req.and_then(|r| this.rank_one(&r));
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(output))
    }

    async fn model_info(&self, _: Request<v1::ModelInfoRequest>) -> Result<Response<v1::ModelInfoResponse>, Status> {
        Ok(Response::new(convert::model_info(&self.store.current())))
    }
}

/// A stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(f: F) -> RankStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<v1::RankResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

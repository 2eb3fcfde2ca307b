//! The service around the model: transport, isolation, overload, deadlines, lifecycle, security,
//! observability. Each test drives a real server on 127.0.0.1:0 with a real tonic client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use xsell_proto::v1::cross_sell_client::CrossSellClient;
use xsell_proto::v1::{ModelInfoRequest, RankBatchRequest, RankRequest, Suppression};
use xsell_server::{Metrics, ModelStore, ReloadOutcome, ServeConfig};
use xsell_train::{NoProgress, TrainConfig};

/// One model trained for every test here (training is the slow part); each test saves it into
/// its own directory.
struct Trained {
    fitted: xsell_train::Fitted,
    returner: String,
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let (lines, truth) =
            xsell_data::generate::generate(&xsell_data::generate::GenerateConfig { orders: 3000, customers: 200, ..Default::default() });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.parquet");
        xsell_data::write_lines(&path, &lines).unwrap();
        let log = xsell_data::read_log(path.to_str().unwrap()).unwrap();
        let order: Vec<usize> = (0..log.orders.len()).collect();
        let cfg = TrainConfig { max_steps: 200, ..Default::default() }.check().unwrap();
        let fitted = xsell_train::train(&log, &order, None, &cfg, &mut NoProgress).unwrap();
        let returner = truth.returners.iter().find(|r| fitted.parts.customers.ids.contains(r)).unwrap().clone();
        Trained { fitted, returner }
    })
}

fn manifest(source: &str) -> xsell_model::Manifest {
    let input = xsell_model::InputInfo { source: source.into(), ..Default::default() };
    xsell_model::Manifest::new("test", input, serde_json::Value::Null, serde_json::Value::Null)
}

/// A fresh `models/test` with one bundle.
fn models() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("models/test");
    xsell_model::save(&model_dir, manifest("/secret/place/orders.parquet"), &trained().fitted.parts).unwrap();
    (dir, model_dir)
}

fn config(model_dir: &Path) -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        models: model_dir.parent().unwrap().to_path_buf(),
        name: model_dir.file_name().unwrap().to_string_lossy().into_owned(),
        reload_secs: 0.0,
        metrics_addr: String::new(),
        ..Default::default()
    }
}

struct Running {
    addr: String,
    store: Arc<ModelStore>,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), xsell_server::ServeError>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.handle).await.expect("the server stops").unwrap().unwrap();
    }
}

async fn start(cfg: ServeConfig) -> Running {
    let bound = xsell_server::bind(&cfg).await.unwrap();
    let addr = bound.local_addr().to_string();
    let (store, metrics, metrics_addr) = (bound.store(), bound.metrics(), bound.metrics_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(xsell_server::serve_on(bound, async {
        let _ = rx.await;
    }));
    Running { addr, store, metrics, metrics_addr, stop: Some(tx), handle }
}

async fn channel(addr: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} did not come up");
}

async fn client(addr: &str) -> CrossSellClient<Channel> {
    CrossSellClient::new(channel(addr).await).max_decoding_message_size(64 << 20)
}

fn item(k: usize) -> String {
    let ids = &trained().fitted.parts.items.ids;
    ids[k % ids.len()].clone()
}

fn small(k: usize) -> RankRequest {
    RankRequest { basket: vec![item(k)], k: 5, ..Default::default() }
}

async fn health(ch: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(ch).check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status)
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_sending_5000_quick_messages_gets_5000_answers() {
    let (_d, dir) = models();
    let s = start(config(&dir)).await;
    let mut c = client(&s.addr).await;
    let reqs: Vec<RankRequest> = (0..5000).map(small).collect();
    let mut stream = c.rank_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(r) = stream.next().await {
        assert!(!r.unwrap().items.is_empty());
        n += 1;
    }
    assert_eq!(n, 5000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_ids_and_privacy() {
    let (_d, dir) = models();
    let s = start(config(&dir)).await;
    let mut c = client(&s.addr).await;
    // a batch whose response would be huge is refused before any work, naming the limit
    let requests = (0..10_000).map(|k| RankRequest { k: 1000, ..small(k) }).collect();
    let e = c.rank_batch(RankBatchRequest { requests }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max_batch_offers"), "{}", e.message());
    let e = c.rank_batch(RankBatchRequest { requests: (0..10_001).map(small).collect() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // a batch with one bad member is refused, naming it, before any of the batch is ranked
    let mut requests: Vec<RankRequest> = (0..50).map(small).collect();
    requests[49].touchpoint = 99;
    let e = c.rank_batch(RankBatchRequest { requests }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("request 49: touchpoint 99"), "{}", e.message());
    assert_eq!(s.metrics.ranked.get(), 0, "nothing was ranked");
    // request ids are bounded and cannot forge log lines
    for id in ["x".repeat(200), "a\nforged log line".into()] {
        let e = c.rank(RankRequest { request_id: id, ..small(0) }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let r = c.rank(RankRequest { request_id: "checkout-42".into(), ..small(0) }).await.unwrap().into_inner();
    assert_eq!(r.request_id, "checkout-42");
    assert_eq!(r.suppression, Suppression::None as i32);
    // ModelInfo tells no filesystem path
    let info = c.model_info(ModelInfoRequest {}).await.unwrap().into_inner();
    assert!(!info.manifest_json.contains("/secret/place"), "{}", info.manifest_json);
    assert!(info.manifest_json.contains("orders.parquet"));
    // a habitual returner gets a reason code, not their figures
    let r = c.rank(RankRequest { customer_id: Some(trained().returner.clone()), ..small(0) }).await.unwrap().into_inner();
    assert!(r.items.is_empty());
    assert_eq!(r.suppression, Suppression::ReturnRisk as i32);
    assert!(!r.suppressed_reason.contains('%') && !r.suppressed_reason.chars().any(|ch| ch.is_ascii_digit()), "{}", r.suppressed_reason);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_to_customer_offers_only_items_the_customer_never_bought() {
    let (_d, dir) = models();
    let s = start(config(&dir)).await;
    let mut c = client(&s.addr).await;
    let parts = &trained().fitted.parts;
    let (cust, past) = (0..parts.customers.ids.len())
        .map(|k| (k, parts.history.row(k).0))
        .find(|(k, row)| row.len() >= 3 && parts.customers.return_rate[*k] < 0.2)
        .map(|(k, row)| (parts.customers.ids[k].clone(), row.iter().map(|&i| parts.items.ids[i as usize].clone()).collect::<Vec<_>>()))
        .unwrap();
    let ask = |new_to_customer| RankRequest {
        customer_id: Some(cust.clone()),
        basket: vec![item(7)],
        k: 1000,
        allow_substitutes: true,
        new_to_customer,
        ..Default::default()
    };
    let all: Vec<String> = c.rank(ask(false)).await.unwrap().into_inner().items.into_iter().map(|i| i.item_id).collect();
    assert!(past.iter().any(|p| all.contains(p)), "without the flag past items are offered");
    let new: Vec<String> = c.rank(ask(true)).await.unwrap().into_inner().items.into_iter().map(|i| i.item_id).collect();
    assert!(!new.is_empty() && new.iter().all(|i| !past.contains(i)), "with it, none is");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_and_a_short_deadline_frees_the_worker() {
    let (_d, dir) = models();
    let s = start(ServeConfig { compute_threads: 1, max_in_flight: 1, ..config(&dir) }).await;
    let mut c = client(&s.addr).await;
    let batch = || RankBatchRequest { requests: (0..10_000).map(small).collect() };

    // a batch whose client gives up after 20 ms stops early: the worker is freed
    let mut req = tonic::Request::new(batch());
    req.set_timeout(Duration::from_millis(20));
    let e = c.rank_batch(req).await.unwrap_err();
    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
    let m = s.metrics.clone();
    eventually("the batch is abandoned", || m.abandoned.get() >= 1).await;
    eventually("the abandoned batch left the pool", || m.jobs_running.get() == 0).await;
    assert!(m.ranked.get() < 10_000, "the batch ran to its end: {} requests ranked", m.ranked.get());
    c.rank(small(1)).await.expect("the freed worker answers at once");

    // beyond max_in_flight, calls are shed at once instead of queued
    let addr = s.addr.clone();
    let busy = tokio::spawn(async move { client(&addr).await.rank_batch(batch()).await });
    eventually("the batch is running", || m.jobs_running.get() == 1).await;
    let e = c.rank(small(2)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_in_flight"));
    assert!(m.shed.get() >= 1);
    // health stays responsive while the pool is busy
    assert_eq!(health(channel(&s.addr).await, "").await.unwrap(), ServingStatus::Serving as i32);
    busy.abort();
    eventually("the pool is idle", || m.jobs_running.get() == 0).await;
    c.rank(small(3)).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_are_answered_while_a_batch_runs() {
    let (_d, dir) = models();
    let s = start(ServeConfig { compute_threads: 1, bulk_threads: 1, ..config(&dir) }).await;
    let addr = s.addr.clone();
    let busy = tokio::spawn(async move {
        let requests = (0..10_000).map(small).collect();
        client(&addr).await.rank_batch(RankBatchRequest { requests }).await
    });
    let m = s.metrics.clone();
    eventually("the batch is running", || m.jobs_running.get() == 1).await;
    let mut c = client(&s.addr).await;
    for k in 0..3 {
        assert!(!c.rank(small(k)).await.unwrap().into_inner().items.is_empty());
    }
    assert!(!busy.is_finished(), "the small calls did not wait for the batch");
    assert_eq!(busy.await.unwrap().unwrap().into_inner().responses.len(), 10_000);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_an_open_stream_ends_within_the_grace_period() {
    let (_d, dir) = models();
    let s = start(ServeConfig { shutdown_grace_secs: 0.3, ..config(&dir) }).await;
    let ch = channel(&s.addr).await;
    let mut watch =
        HealthClient::new(ch.clone()).watch(HealthCheckRequest { service: xsell_server::SERVICE.into() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let (tx, rx) = tokio::sync::mpsc::channel::<RankRequest>(4);
    let mut answers = CrossSellClient::new(ch).rank_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(small(0)).await.unwrap();
    assert!(answers.next().await.unwrap().is_ok());
    // the client keeps its stream open; shutdown must not wait for it
    let started = std::time::Instant::now();
    let Running { stop, handle, .. } = s;
    stop.unwrap().send(()).unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::NotServing as i32, "health goes NOT_SERVING at once");
    let end = tokio::time::timeout(Duration::from_secs(10), answers.next()).await.expect("the stream is closed");
    assert!(matches!(end, Some(Err(ref e)) if e.code() == Code::Unavailable) || end.is_none(), "{end:?}");
    tokio::time::timeout(Duration::from_secs(10), handle).await.expect("the server stops").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown took {:?}", started.elapsed());
    drop(tx);
}

fn certificate() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_tokens_guard_everything_but_health() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let (d, dir) = models();
    let (cert, key) = certificate();
    let (cert_path, key_path, tokens) = (d.path().join("cert.pem"), d.path().join("key.pem"), d.path().join("tokens"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    std::fs::write(&tokens, "# service tokens\ns3cret-token\n\nother-token\n").unwrap();
    let cfg = ServeConfig {
        tls: Some(xsell_server::config::Tls { cert: cert_path, key: key_path, client_ca: None }),
        auth: xsell_server::config::Auth { tokens_file: Some(tokens), tokens_env: None },
        ..config(&dir)
    };
    let s = start(cfg).await;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert)).domain_name("localhost");
    let mut ch = None;
    for _ in 0..100 {
        let ep = Channel::from_shared(format!("https://{}", s.addr)).unwrap().tls_config(tls.clone()).unwrap();
        if let Ok(c) = ep.connect().await {
            ch = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ch = ch.expect("TLS connection");
    let mut c = CrossSellClient::new(ch.clone());
    assert_eq!(c.rank(small(0)).await.unwrap_err().code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(small(0));
    wrong.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(c.rank(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    for token in ["s3cret-token", "other-token"] {
        let mut ok = tonic::Request::new(small(0));
        ok.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert!(!c.rank(ok).await.unwrap().into_inner().items.is_empty());
    }
    assert_eq!(health(ch, xsell_server::SERVICE).await.unwrap(), ServingStatus::Serving as i32, "health needs no token");
    // plaintext is not served on a TLS port
    let plain = Channel::from_shared(format!("http://{}", s.addr)).unwrap().connect().await;
    if let Ok(p) = plain {
        assert!(CrossSellClient::new(p).rank(small(0)).await.is_err());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_api_and_health() {
    let (_d, dir) = models();
    let s = start(config(&dir)).await;
    let ch = channel(&s.addr).await;
    let v1 = {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::{ServerReflectionRequest, ServiceResponse};
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut stream =
            ServerReflectionClient::new(ch.clone()).server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = stream.next().await.unwrap().unwrap().message_response else {
            panic!("unexpected reflection answer")
        };
        list.service.into_iter().map(|s: ServiceResponse| s.name).collect::<Vec<_>>()
    };
    let v1alpha = {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServiceResponse};
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut stream = ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = stream.next().await.unwrap().unwrap().message_response else {
            panic!("unexpected reflection answer")
        };
        list.service.into_iter().map(|s: ServiceResponse| s.name).collect::<Vec<_>>()
    };
    for names in [&v1, &v1alpha] {
        assert!(names.iter().any(|n| n == "xsell.v1.CrossSell"), "{names:?}");
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, dir) = models();
    let s = start(ServeConfig { metrics_addr: "127.0.0.1:0".into(), ..config(&dir) }).await;
    let mut c = client(&s.addr).await;
    for k in 0..5 {
        c.rank(small(k)).await.unwrap();
    }
    let _ = c.rank(RankRequest { k: 0, ..small(0) }).await.unwrap_err();
    let mut tcp = tokio::net::TcpStream::connect(s.metrics_addr.unwrap()).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for want in [
        r#"xsell_calls_total{rpc="Rank",code="Ok"} 5"#,
        r#"xsell_calls_total{rpc="Rank",code="InvalidArgument"} 1"#,
        "xsell_call_duration_seconds_bucket{",
        // five jobs: the request with k = 0 is refused before it reaches the pool
        r#"xsell_rank_job_wait_seconds_count{lane="interactive"} 5"#,
        r#"xsell_rank_job_run_seconds_count{lane="interactive"} 5"#,
        "xsell_model_info{version=",
        "xsell_model_age_seconds",
        "xsell_shed_total 0",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_without_a_model_serves_once_one_appears() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("models/test");
    assert!(xsell_server::bind(&config(&dir)).await.is_err(), "without wait_for_model a missing model is an error");
    let s = start(ServeConfig { wait_for_model: true, reload_secs: 0.05, ..config(&dir) }).await;
    let ch = channel(&s.addr).await;
    assert_eq!(health(ch.clone(), xsell_server::SERVICE).await.unwrap(), ServingStatus::NotServing as i32);
    let e = CrossSellClient::new(ch.clone()).rank(small(0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    xsell_model::save(&dir, manifest("orders.parquet"), &trained().fitted.parts).unwrap();
    let store = s.store.clone();
    eventually("the model is loaded", || store.current().is_some()).await;
    for _ in 0..100 {
        if health(ch.clone(), xsell_server::SERVICE).await.unwrap() == ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(ch.clone(), xsell_server::SERVICE).await.unwrap(), ServingStatus::Serving as i32);
    assert!(!CrossSellClient::new(ch).rank(small(0)).await.unwrap().into_inner().items.is_empty());
    s.stop().await;
}

#[test]
fn reloads_are_keyed_on_latest_and_refusals_retried_when_the_files_change() {
    let (_d, dir) = models();
    let store = ModelStore::open(&dir).unwrap();
    let first = store.current().unwrap().key.clone();
    // a bundle copied under another directory name (its manifest still says the old version)
    let copy = dir.join("copied-bundle");
    super::copy_files(&dir.join(&first), &copy);
    std::fs::write(dir.join("latest"), "copied-bundle").unwrap();
    assert_eq!(store.reload(), ReloadOutcome::Loaded("copied-bundle".into()));
    assert_eq!(store.reload(), ReloadOutcome::Unchanged, "loaded once, not at every poll");
    // a broken version is refused once, then left alone until its files change
    let broken = dir.join("broken");
    super::copy_files(&copy, &broken);
    std::fs::write(broken.join("tensors.safetensors"), b"garbage").unwrap();
    std::fs::write(dir.join("latest"), "broken").unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Refused { ref version, .. } if version == "broken"));
    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    assert_eq!(store.current().unwrap().key, "copied-bundle", "the old model keeps serving");
    std::fs::copy(copy.join("tensors.safetensors"), broken.join("tensors.safetensors")).unwrap();
    assert_eq!(store.reload(), ReloadOutcome::Loaded("broken".into()), "repaired files are tried again");
}

mod arbitrary {
    use proptest::prelude::*;

    use super::*;

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0usize..400).prop_map(item),
            1 => ".{0,40}",
            1 => Just(String::new()),
            1 => Just(" ".repeat(3)),
            1 => "[a-z]{300}",
            1 => "\\PC{1,8}",
        ]
    }

    fn ids() -> impl Strategy<Value = Vec<String>> {
        prop_oneof![
            6 => prop::collection::vec(id(), 0..12),
            1 => (0usize..2).prop_map(|dup| vec![item(dup); 40]),
            1 => (1500usize..2600).prop_map(|n| (0..n).map(item).collect()),
        ]
    }

    fn request() -> impl Strategy<Value = RankRequest> {
        (
            prop::option::of(id()),
            ids(),
            prop_oneof![Just(0u32), Just(1), 1u32..50, Just(1000), Just(1001), Just(u32::MAX), any::<u32>()],
            prop_oneof![0i32..6, any::<i32>()],
            prop::collection::vec(id(), 0..4),
            prop_oneof![3 => Just(Vec::new()), 1 => ids()],
            prop::collection::vec(".{0,12}", 0..3),
            prop_oneof![Just(0.0f32), 0.0f32..1.0, any::<f32>()],
            any::<u32>(),
            any::<bool>(),
            prop_oneof![Just(String::new()), ".{0,20}", "[a-z]{120,200}"],
            any::<bool>(),
        )
            .prop_map(
                |(
                    customer_id,
                    basket,
                    k,
                    touchpoint,
                    exclude,
                    candidates,
                    categories,
                    min_probability,
                    max_per_category,
                    allow_substitutes,
                    request_id,
                    new_to_customer,
                )| {
                    RankRequest {
                        customer_id,
                        basket,
                        k,
                        touchpoint,
                        exclude,
                        candidates,
                        categories,
                        min_probability,
                        max_per_category,
                        allow_substitutes,
                        request_id,
                        new_to_customer,
                        objective: 0,
                        // explained whenever substitutes are allowed: both paths get fuzzed
                        explain: allow_substitutes,
                    }
                },
            )
    }

    #[test]
    fn arbitrary_requests_get_ok_invalid_argument_or_resource_exhausted() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (_d, dir) = models();
        let s = rt.block_on(start(config(&dir)));
        let c = rt.block_on(client(&s.addr));
        let cfg = ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() };
        proptest!(cfg, |(reqs in prop::collection::vec(request(), 1..4))| {
            let mut c = c.clone();
            let batch = RankBatchRequest { requests: reqs.clone() };
            let (single, batched) = rt.block_on(async {
                let mut single = Vec::new();
                for r in reqs {
                    let out = tokio::time::timeout(Duration::from_secs(20), c.rank(r)).await.expect("no call hangs");
                    single.push(out.map(|_| ()).map_err(|e| e.code()));
                }
                let b = tokio::time::timeout(Duration::from_secs(20), c.rank_batch(batch)).await.expect("no call hangs");
                (single, b.map(|_| ()).map_err(|e| e.code()))
            });
            for out in single.iter().chain([&batched]) {
                prop_assert!(matches!(out, Ok(()) | Err(Code::InvalidArgument | Code::ResourceExhausted)), "{out:?}");
            }
        });
        rt.block_on(s.stop());
    }
}

//! End to end: generate → train → bundle → gRPC server on 127.0.0.1:0 → real client.

mod serving;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use xsell_core::baseline::{Cooccurrence, Popularity, Recommender};
use xsell_core::protocol::{ProtocolConfig, Query, draw_queries, time_split};
use xsell_core::{ItemIx, OrderLog};
use xsell_data::generate::{GenerateConfig, GroundTruth, generate};
use xsell_proto::v1::cross_sell_client::CrossSellClient;
use xsell_proto::v1::{ModelInfoRequest, RankBatchRequest, RankRequest};
use xsell_server::{ModelStore, ReloadOutcome};
use xsell_train::{NoProgress, TrainConfig};

struct World {
    _dir: tempfile::TempDir,
    log: OrderLog,
    truth: GroundTruth,
    queries: Vec<Query>,
    fitted: xsell_train::Fitted,
    model_dir: PathBuf,
}

fn manifest(fitted: &xsell_train::Fitted) -> xsell_model::Manifest {
    xsell_model::Manifest::new("test", Default::default(), serde_json::Value::Null, serde_json::to_value(&fitted.report).unwrap())
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (lines, truth) = generate(&GenerateConfig { orders: 5000, customers: 300, ..Default::default() });
    let path = dir.path().join("orders.parquet");
    xsell_data::write_lines(&path, &lines).unwrap();
    let log = xsell_data::read_log(path.to_str().unwrap()).unwrap();
    let split = time_split(&log, 0.1);
    let queries = draw_queries(&log, &split, &ProtocolConfig::default());
    let cfg = TrainConfig { max_steps: 400, ..Default::default() }.check().unwrap();
    let fitted = xsell_train::train(&log, &split.train, split.cutoff_ts, &cfg, &mut NoProgress).unwrap();
    let model_dir = dir.path().join("models/test");
    xsell_model::save(&model_dir, manifest(&fitted), &fitted.parts).unwrap();
    World { _dir: dir, log, truth, queries, fitted, model_dir }
}

type Running = (String, Arc<ModelStore>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

async fn start(model_dir: &Path, reload: Duration) -> Running {
    start_with(model_dir, reload, "").await
}

async fn start_with(model_dir: &Path, reload: Duration, exposures: &str) -> Running {
    let cfg = xsell_server::ServeConfig {
        exposures: xsell_server::exposure::ExposureConfig { dir: exposures.into(), ..Default::default() },
        addr: "127.0.0.1:0".parse().unwrap(),
        models: model_dir.parent().unwrap().to_path_buf(),
        name: model_dir.file_name().unwrap().to_string_lossy().into_owned(),
        reload_secs: reload.as_secs_f64(),
        metrics_addr: String::new(),
        ..Default::default()
    };
    let bound = xsell_server::bind(&cfg).await.unwrap();
    let url = format!("http://{}", bound.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let store = bound.store();
    let handle = tokio::spawn(async move {
        xsell_server::serve_on(bound, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (url, store, tx, handle)
}

async fn client(url: &str) -> CrossSellClient<Channel> {
    for _ in 0..50 {
        if let Ok(ch) = Channel::from_shared(url.to_owned()).unwrap().connect().await {
            return CrossSellClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {url} did not come up");
}

/// Copies the files of one directory into another (a bundle under a new name).
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

fn request(q: &Query, k: u32) -> RankRequest {
    RankRequest { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k, ..Default::default() }
}

fn hit_rate(queries: &[Query], lists: &[Vec<String>], k: usize) -> f64 {
    let hits = queries.iter().zip(lists).filter(|(q, l)| l.iter().take(k).any(|i| *i == q.target)).count();
    hits as f64 / queries.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ranking_beats_the_baselines_and_recovers_complements() {
    let w = world();
    assert!(w.queries.len() > 100, "{} queries", w.queries.len());
    let (url, _store, stop, handle) = start(&w.model_dir, Duration::ZERO).await;
    let mut c = client(&url).await;

    let requests = w.queries.iter().map(|q| request(q, 10)).collect();
    let resp = c.rank_batch(RankBatchRequest { requests }).await.unwrap().into_inner();
    let ours: Vec<Vec<String>> = resp.responses.iter().map(|r| r.items.iter().map(|i| i.item_id.clone()).collect()).collect();
    for (q, r) in w.queries.iter().zip(&resp.responses) {
        assert!(r.items.iter().all(|i| !q.basket.contains(&i.item_id)), "a basket item was offered");
        assert!(r.items.iter().all(|i| (0.0..=1.0).contains(&i.probability)));
    }
    let ix = |s: &str| w.log.catalog.ids.iter().position(|x| x == s).unwrap() as ItemIx;
    let agg = &w.fitted.aggregates;
    let baseline = |rec: &dyn Recommender| -> Vec<Vec<String>> {
        w.queries
            .iter()
            .map(|q| {
                let basket: Vec<ItemIx> = q.basket.iter().map(|s| ix(s)).collect();
                rec.recommend(None, &basket, 10).into_iter().map(|i| w.log.catalog.ids[i as usize].clone()).collect()
            })
            .collect()
    };
    // ranking quality is compared where the model ranks: habitual returners get no offers on
    // purpose (checked below), the baselines know nothing of that
    let ranked: Vec<bool> = resp.responses.iter().map(|r| r.suppressed_reason.is_empty()).collect();
    let keep = |lists: Vec<Vec<String>>| -> (Vec<Query>, Vec<Vec<String>>) {
        w.queries.iter().cloned().zip(lists).zip(&ranked).filter(|(_, r)| **r).map(|(ql, _)| ql).unzip()
    };
    let rate = |lists: Vec<Vec<String>>| {
        let (q, l) = keep(lists);
        hit_rate(&q, &l, 10)
    };
    assert!(ranked.iter().filter(|r| **r).count() * 10 >= ranked.len() * 8, "most queries are ranked");
    let (h_model, h_cooc, h_pop) = (rate(ours.clone()), rate(baseline(&Cooccurrence(agg))), rate(baseline(&Popularity(agg))));
    assert!(h_model > h_cooc + 0.04, "model hit@10 {h_model:.3} vs co-occurrence {h_cooc:.3}");
    assert!(h_model > h_pop + 0.3, "model hit@10 {h_model:.3} vs popularity {h_pop:.3}");

    // ground truth: a lone primary item gets its specific compatible accessory near the top,
    // and never one of its substitutes
    let mut recovered = 0;
    let primaries: Vec<&String> = w.truth.complements.keys().filter(|p| w.log.catalog.ids.contains(p)).collect();
    for p in &primaries {
        let r = c.rank(RankRequest { basket: vec![(*p).clone()], k: 5, ..Default::default() }).await.unwrap().into_inner();
        let got: Vec<&str> = r.items.iter().map(|i| i.item_id.as_str()).collect();
        recovered += usize::from(got.iter().take(3).any(|g| w.truth.complements[*p][..2].iter().any(|c| c == g)));
        assert!(got.iter().all(|g| w.truth.category[*g] != w.truth.category[p.as_str()]), "substitute offered for {p}: {got:?}");
        assert!(r.items.first().is_some_and(|i| i.reason_item_id == **p && i.reason.starts_with("often bought with")));
    }
    assert!(recovered * 10 >= primaries.len() * 9, "complements recovered for {recovered}/{} primaries", primaries.len());

    // habitual returners are not pushed
    let returner = w.truth.returners.iter().find(|r| w.fitted.parts.customers.ids.contains(r)).unwrap();
    let r = c
        .rank(RankRequest { customer_id: Some(returner.clone()), basket: vec![primaries[0].clone()], k: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.items.is_empty() && !r.suppressed_reason.is_empty());

    let info = c.model_info(ModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.items as usize, w.fitted.parts.items.ids.len());
    assert_eq!(resp.responses[0].model_version, info.version);

    // streaming form answers in order
    let reqs: Vec<RankRequest> = w.queries.iter().take(20).map(|q| request(q, 10)).collect();
    let mut stream = c.rank_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(r) = tokio_stream::StreamExt::next(&mut stream).await {
        let items: Vec<String> = r.unwrap().items.into_iter().map(|i| i.item_id).collect();
        assert_eq!(items, ours[n]);
        n += 1;
    }
    assert_eq!(n, 20);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_and_health_is_served() {
    let w = world();
    let (url, _store, stop, handle) = start(&w.model_dir, Duration::ZERO).await;
    let mut c = client(&url).await;
    let item = w.fitted.parts.items.ids[0].clone();
    let cases = [
        RankRequest { basket: vec![item.clone()], k: 0, ..Default::default() },
        RankRequest { basket: vec![item.clone()], k: 1_000_000, ..Default::default() },
        RankRequest { basket: vec![String::new()], k: 5, ..Default::default() },
        RankRequest { customer_id: Some(String::new()), basket: vec![item.clone()], k: 5, ..Default::default() },
        RankRequest { basket: (0..5000).map(|k| k.to_string()).collect(), k: 5, ..Default::default() },
        RankRequest { basket: vec![item.clone()], k: 5, touchpoint: 99, ..Default::default() },
        RankRequest { basket: vec![item.clone()], k: 5, min_probability: 2.0, ..Default::default() },
    ];
    for req in cases {
        let status = c.rank(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().is_empty());
    }
    // an unknown customer and unknown items still get an answer
    let r = c
        .rank(RankRequest { customer_id: Some("nobody".into()), basket: vec!["no-such-item".into()], k: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.customer_known && r.unknown_items == ["no-such-item"] && r.items.len() == 3);

    let channel = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health_client(channel);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: "xsell.v1.CrossSell".into() }).await.unwrap().into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    stop.send(()).unwrap();
    handle.await.unwrap();
}

fn tonic_health_client(channel: Channel) -> tonic_health::pb::health_client::HealthClient<Channel> {
    tonic_health::pb::health_client::HealthClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_bundles_are_hot_reloaded_and_broken_ones_refused() {
    let w = world();
    let (url, store, stop, handle) = start(&w.model_dir, Duration::from_millis(100)).await;
    let mut c = client(&url).await;
    let v1 = c.model_info(ModelInfoRequest {}).await.unwrap().into_inner().version;
    let q = request(&w.queries[0], 5);

    // keep requests flowing while bundles change under the server: none may fail
    let url2 = url.clone();
    let q2 = q.clone();
    let load = tokio::spawn(async move {
        let mut c = client(&url2).await;
        for _ in 0..200 {
            c.rank(q2.clone()).await.expect("no request fails during a reload");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    // a broken bundle: the latest pointer names a directory with a corrupt tensor file
    let broken = xsell_model::save(&w.model_dir, manifest(&w.fitted), &w.fitted.parts).unwrap();
    std::fs::write(broken.join("tensors.safetensors"), b"garbage").unwrap();
    let bv = broken.file_name().unwrap().to_string_lossy().into_owned();
    assert!(matches!(store.reload(), ReloadOutcome::Refused { version, .. } if version == bv) || store.current().unwrap().key == v1);
    assert_eq!(c.model_info(ModelInfoRequest {}).await.unwrap().into_inner().version, v1, "the old model keeps serving");
    assert!(xsell_model::load(&broken).unwrap_err().to_string().contains("tensors.safetensors"));

    // a good bundle is picked up by the poller without a restart
    tokio::time::sleep(Duration::from_millis(1100)).await; // versions are per-second names
    let good = xsell_model::save(&w.model_dir, manifest(&w.fitted), &w.fitted.parts).unwrap();
    let gv = good.file_name().unwrap().to_string_lossy().into_owned();
    let mut served = String::new();
    for _ in 0..50 {
        served = c.model_info(ModelInfoRequest {}).await.unwrap().into_inner().version;
        if served == gv {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, gv);
    let r = c.rank(q).await.unwrap().into_inner();
    assert_eq!(r.model_version, gv);
    load.await.unwrap();
    stop.send(()).unwrap();
    handle.await.unwrap();
}

#[test]
fn bundles_round_trip_and_refuse_damage() {
    let w = world();
    let b = xsell_model::load_latest(&w.model_dir).unwrap();
    assert_eq!(b.model.parts(), &w.fitted.parts, "a bundle loads back exactly");
    // a format version from the future
    let m = b.path.join("manifest.json");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace(&format!("\"format_version\": {}", xsell_model::FORMAT_VERSION), "\"format_version\": 99");
    std::fs::write(&m, text).unwrap();
    let msg = xsell_model::load(&b.path).unwrap_err().to_string();
    assert!(msg.contains("format version 99"), "{msg}");
    // bundles of earlier formats still load: format 3 without EASE's intercept, format 2 also
    // without pair weights
    assert_eq!(w.fitted.parts.ease_always_on.len(), w.fitted.parts.items.ids.len(), "the trained model has an intercept");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("\"format_version\": 99", "\"format_version\": 3")).unwrap();
    let old = xsell_model::load(&b.path).unwrap();
    assert!(old.model.parts().ease_always_on.is_empty());
    assert_eq!(old.model.parts().ease_pairs, w.fitted.parts.ease_pairs);
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("\"format_version\": 3", "\"format_version\": 2")).unwrap();
    let old = xsell_model::load(&b.path).unwrap();
    assert_eq!(old.model.parts().ease_pairs, Default::default());
    assert_eq!(old.model.parts().ease, w.fitted.parts.ease);
    // a truncated catalog
    let b2 = xsell_model::save(&w.model_dir, manifest(&w.fitted), &w.fitted.parts).unwrap();
    std::fs::write(b2.join("catalog.parquet"), b"PAR1").unwrap();
    let msg = xsell_model::load(&b2).unwrap_err().to_string();
    assert!(msg.contains("catalog.parquet"), "{msg}");
    // no temporary directories are left behind
    assert!(std::fs::read_dir(&w.model_dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let (a, b) = (world(), world());
    assert_eq!(a.fitted.parts, b.fitted.parts);
}

/// Frozen bundles of every format the loader accepts, each written once by the code of its
/// format (formats 2 and 3 by the builds of commits 6be9320^ and 7e9d916^, format 4 by that of
/// 6663b30, format 5 by this one, each from a 400-order generated log).
#[test]
fn frozen_bundles_of_every_format_load_and_rank() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for format in xsell_model::OLDEST_FORMAT_VERSION..=xsell_model::FORMAT_VERSION {
        let dir = root.join(format!("format-{format}"));
        let b = xsell_model::load_latest(&dir).unwrap_or_else(|e| panic!("format {format}: {e}"));
        assert_eq!(b.manifest.format_version, format);
        let parts = b.model.parts();
        assert_eq!(parts.ease_always_on.is_empty(), format < 4, "format {format}: EASE's intercept");
        if format < 3 {
            assert!(parts.ease_pairs.pairs.is_empty());
        }
        // before format 5 the embedding neighbour lists are computed at load
        assert_eq!(parts.neighbours.comp.n_rows(), parts.items.ids.len(), "format {format}: neighbour lists");
        assert_eq!(parts.retrieval.budget, if format < 5 { xsell_core::retrieval::DEFAULT_BUDGET } else { 40 }, "format {format}");
        // format 6 stores latent categories (its fixture's log has no categories)
        assert_eq!(parts.latent_categories.len(), if format < 6 { 0 } else { parts.items.ids.len() }, "format {format}");
        let basket = vec![parts.items.ids[0].clone()];
        let r = b.model.rank(&xsell_core::RankQuery { basket: basket.clone(), k: 5, ..Default::default() }).unwrap();
        assert_eq!(r.items.len(), 5, "format {format}");
        for i in &r.items {
            assert!(parts.items.ids[i.item as usize] != basket[0] && (0.0..=1.0).contains(&i.probability) && i.score.is_finite());
        }
    }
    // a bundle whose feature columns are not this build's is refused, not mis-scored
    let tmp = tempfile::tempdir().unwrap();
    let src = xsell_model::load_latest(&root.join(format!("format-{}", xsell_model::FORMAT_VERSION))).unwrap().path;
    copy_files(&src, tmp.path());
    let m = tmp.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    manifest["features"].as_array_mut().unwrap().swap(0, 1);
    std::fs::write(&m, serde_json::to_string(&manifest).unwrap()).unwrap();
    let msg = xsell_model::load(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("retrain"), "{msg}");
}

/// The protocol query as a core request, substitutes kept (so only the scores decide).
fn core_query(q: &Query, k: usize) -> xsell_core::RankQuery {
    xsell_core::RankQuery { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k, allow_substitutes: true, ..Default::default() }
}

#[test]
fn two_stage_ranking_with_a_budget_over_the_catalog_is_full_scoring() {
    let w = world();
    let mut model = xsell_core::CrossSellModel::new(w.fitted.parts.clone()).unwrap();
    let n = model.n_items();
    model.set_budget(n).unwrap();
    let mut compared = 0;
    for q in w.queries.iter().take(80) {
        let rq = core_query(q, 10);
        let got = model.rank(&rq).unwrap();
        if got.suppressed.is_some() {
            continue;
        }
        let customer = q.customer_id.as_deref().and_then(|c| model.customer(c));
        let basket: Vec<ItemIx> = q.basket.iter().filter_map(|id| model.item(id)).collect();
        // the reference: every catalog item scored, best first, basket left out
        let x = model.features(customer, &basket);
        let s = model.parts().ranker.scores(&x);
        let mut all: Vec<ItemIx> = (0..n as ItemIx).filter(|j| !basket.contains(j)).collect();
        all.sort_by(|&a, &b| s[b as usize].total_cmp(&s[a as usize]).then(a.cmp(&b)));
        let want: Vec<(ItemIx, f32)> = all.iter().take(10).map(|&j| (j, s[j as usize])).collect();
        let got: Vec<(ItemIx, f32)> = got.items.iter().map(|i| (i.item, i.score)).collect();
        assert_eq!(got, want, "query {q:?}");
        // an item's features do not depend on the other candidates
        let c = model.candidates(&rq).unwrap();
        assert_eq!(c.items.len(), n - basket.len(), "a budget over the catalog takes every eligible item");
        let some: Vec<ItemIx> = c.items.iter().rev().step_by(7).copied().collect();
        let sub = model.features_of(customer, &basket, &some);
        for (r, &j) in some.iter().enumerate() {
            assert_eq!(sub.row(r), x.row(j as usize), "item {j}");
        }
        compared += 1;
    }
    assert!(compared > 40, "{compared} queries compared");
    assert!(model.set_budget(0).unwrap_err().to_string().contains("candidate budget"), "a zero budget is refused by name");
}

#[test]
fn candidates_of_a_primary_item_hold_its_ground_truth_complements() {
    let w = world();
    let mut model = xsell_core::CrossSellModel::new(w.fitted.parts.clone()).unwrap();
    let budget = model.n_items() / 5;
    model.set_budget(budget).unwrap();
    let (mut found, mut total) = (0, 0);
    for (primary, complements) in &w.truth.complements {
        if model.item(primary).is_none() {
            continue;
        }
        let c = model.candidates(&xsell_core::RankQuery { basket: vec![primary.clone()], k: 10, ..Default::default() }).unwrap();
        assert!(c.items.len() <= budget);
        for comp in complements.iter().filter_map(|id| model.item(id)) {
            total += 1;
            found += usize::from(c.items.contains(&comp));
        }
    }
    assert!(total > 50, "{total} complements");
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.95, "a primary item's candidates (budget {budget} of {}) hold {recall:.3} of its complements", model.n_items());
}

#[test]
fn a_discovery_ranker_is_judged_on_novel_target_queries_when_asked_for() {
    let (lines, _) = generate(&GenerateConfig { orders: 5000, customers: 300, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.parquet");
    xsell_data::write_lines(&path, &lines).unwrap();
    let log = xsell_data::read_log(path.to_str().unwrap()).unwrap();
    let split = time_split(&log, 0.1);
    let cfg = TrainConfig { max_steps: 400, discovery_ranker: true, ..Default::default() }.check().unwrap();
    let fitted = xsell_train::train(&log, &split.train, split.cutoff_ts, &cfg, &mut NoProgress).unwrap();
    let d = fitted.report.discovery.expect("enough novel-target queries to judge a discovery ranker");
    assert!(d.queries >= 50, "{} held-out queries", d.queries);
    let names: Vec<&str> = d.systems.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.starts_with(&["general ranker", "linear ranker"]), "the general ranker against the discovery ones: {names:?}");
    assert_eq!(fitted.parts.discovery_ranker.is_some(), d.kept != "general ranker");
}

/// Without categories in the log, the trainer's latent categories and the co-purchase evidence
/// recover the generator's substitutes (two items of one primary category) and never take a
/// ground-truth complement for one; offers for a primary item then hold no substitute.
#[test]
fn latent_categories_recover_the_ground_truth_substitutes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lines, truth) = generate(&GenerateConfig { orders: 10_000, customers: 300, ..Default::default() });
    for l in &mut lines {
        l.category = None;
    }
    let path = dir.path().join("orders.parquet");
    xsell_data::write_lines(&path, &lines).unwrap();
    let log = xsell_data::read_log(path.to_str().unwrap()).unwrap();
    let split = time_split(&log, 0.1);
    let cfg = TrainConfig::default().check().unwrap();
    let fitted = xsell_train::train(&log, &split.train, split.cutoff_ts, &cfg, &mut NoProgress).unwrap();
    let model = xsell_core::CrossSellModel::new(fitted.parts.clone()).unwrap();
    assert!(model.latent_kinds(), "a log without categories gets latent ones");
    let primaries: Vec<&String> = truth.complements.keys().filter(|p| model.item(p).is_some()).collect();
    let (mut subs, mut subs_found, mut comps, mut comps_wrong) = (0, 0, 0, 0);
    for &a in &primaries {
        let i = model.item(a).unwrap();
        for &b in primaries.iter().filter(|&&b| b != a && truth.category[b] == truth.category[a]) {
            subs += 1;
            subs_found += usize::from(model.judged_substitute(i, model.item(b).unwrap()));
        }
        for c in truth.complements[a].iter().filter_map(|c| model.item(c)) {
            comps += 1;
            comps_wrong += usize::from(model.judged_substitute(i, c));
        }
    }
    let (recall, false_rate) = (subs_found as f64 / subs as f64, comps_wrong as f64 / comps as f64);
    eprintln!("substitute pairs recovered {recall:.3} of {subs}; complements taken for substitutes {false_rate:.3} of {comps}");
    assert!(recall >= 0.5, "substitute recall {recall:.3}");
    assert!(false_rate <= 0.02, "complements judged substitutes {false_rate:.3}");
    let r = fitted.report.latent_substitutes.as_ref().expect("judged on the held-out queries");
    assert!(r.applied && model.parts().latent_substitutes, "customers seldom add a second camera: {r:?}");
    let offered = |allow_substitutes| {
        primaries
            .iter()
            .map(|&p| {
                let q = xsell_core::RankQuery { basket: vec![p.clone()], k: 10, allow_substitutes, ..Default::default() };
                let r = model.rank(&q).unwrap();
                r.items.iter().filter(|o| truth.category[&model.parts().items.ids[o.item as usize]] == truth.category[p]).count()
            })
            .sum::<usize>()
    };
    let (leaked, allowed) = (offered(false), offered(true));
    eprintln!("ground-truth substitutes in the top 10 of {} primary items: {leaked} (substitutes allowed: {allowed})", primaries.len());
    // the highest-ranked substitutes are those bought together more often than the rest: the
    // evidence rightly hesitates on them; at least a fifth of those offered are withheld
    assert!(allowed > 0 && leaked * 5 <= allowed * 4, "the rule withholds substitutes: {leaked} of {allowed} remain");
}

/// With `[exposures] dir`, every answer is written as one JSON line: request id, model version,
/// customer, touchpoint and the offers with rank and probability, as the client received them;
/// with `explain`, every offer carries its drivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_written_to_the_exposure_log() {
    let w = world();
    let log_dir = w._dir.path().join("exposures");
    let (url, _store, stop, handle) = start_with(&w.model_dir, Duration::ZERO, log_dir.to_str().unwrap()).await;
    let mut c = client(&url).await;
    let mut answers = Vec::new();
    let (mut offers, mut explained) = (0, 0);
    for (n, q) in w.queries.iter().take(20).enumerate() {
        let req = RankRequest { request_id: format!("req-{n}"), touchpoint: 2, explain: true, ..request(q, 5) };
        let resp = c.rank(req).await.unwrap().into_inner();
        // explain: each offer's drivers are basket items or the customer's history (an offer that
        // none of them raised, a popular item, has none)
        for o in &resp.items {
            offers += 1;
            explained += usize::from(!o.drivers.is_empty());
            for d in &o.drivers {
                assert!(d.history || q.basket.contains(&d.item_id), "{d:?} is neither history nor a basket item");
                assert!(d.share > 0.0 && d.share <= 1.0);
            }
        }
        answers.push((q.customer_id.clone(), resp));
    }
    assert!(explained * 2 > offers, "{explained} of {offers} offers have drivers");
    let _ = stop.send(());
    handle.await.unwrap();
    // the writer flushes within a second and when the server has gone
    // (the writer's buffer may have reached the file mid-line: a line that does not parse yet is
    // one still being written, so read again)
    let mut records = Vec::new();
    for _ in 0..100 {
        let parsed: Result<Vec<_>, _> = std::fs::read_dir(&log_dir)
            .unwrap()
            .flat_map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .map(|l| serde_json::from_str::<xsell_server::exposure::Exposure>(&l))
            .collect();
        if let Ok(r) = parsed {
            records = r;
            if records.len() == answers.len() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(records.len(), answers.len());
    for (customer, resp) in &answers {
        let e = records.iter().find(|e| e.request_id == resp.request_id).expect("every answer is logged");
        assert_eq!((&e.model_version, &e.customer_id, e.touchpoint.as_str()), (&resp.model_version, customer, "cart"));
        let offers: Vec<(&str, u32)> = e.offers.iter().map(|o| (o.item_id.as_str(), o.rank)).collect();
        let expected: Vec<(&str, u32)> = resp.items.iter().enumerate().map(|(r, i)| (i.item_id.as_str(), r as u32 + 1)).collect();
        assert_eq!(offers, expected);
        assert!(e.offers.iter().zip(&resp.items).all(|(o, i)| o.probability == i.probability));
    }
}

/// `Bundle` over gRPC: items that complement the basket and each other, never a basket item or
/// two substitutes, with the chain probability and the discounted expected value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_complement_the_basket_and_each_other() {
    use xsell_proto::v1::BundleRequest;
    let w = world();
    let (url, _store, stop, handle) = start(&w.model_dir, Duration::ZERO).await;
    let mut c = client(&url).await;
    let model = xsell_core::CrossSellModel::new(w.fitted.parts.clone()).unwrap();
    let (mut bundles, mut with_complement) = (0, 0);
    for (primary, complements) in w.truth.complements.iter().filter(|(p, _)| model.item(p).is_some()) {
        let rank = RankRequest { basket: vec![primary.clone()], ..Default::default() };
        let b = c.bundle(BundleRequest { request: Some(rank), size: 3, discount: 0.1 }).await.unwrap().into_inner();
        let items: Vec<String> = b.items.as_ref().unwrap().items.iter().map(|i| i.item_id.clone()).collect();
        assert!(!items.is_empty() && items.len() <= 3, "{items:?}");
        assert!(!items.contains(primary), "a basket item in the bundle");
        for (x, a) in items.iter().enumerate() {
            for bb in &items[x + 1..] {
                assert_ne!(a, bb);
                let (i, j) = (model.item(a).unwrap(), model.item(bb).unwrap());
                assert!(!model.judged_substitute(i, j) && !model.judged_substitute(j, i), "{a} and {bb} are substitutes");
            }
        }
        let p: f32 = b.items.as_ref().unwrap().items.iter().map(|i| i.probability).product();
        assert!((b.probability - p).abs() < 1e-6 && b.probability > 0.0);
        assert!((b.discounted_price - 0.9 * b.price).abs() < 1e-3 && (b.expected_value - p * b.discounted_price).abs() < 1e-3);
        bundles += 1;
        with_complement += usize::from(items.iter().any(|i| complements.contains(i)));
    }
    assert!(with_complement * 10 >= bundles * 8, "{with_complement} of {bundles} bundles hold a ground-truth complement");
    for (size, discount) in [(6, 0.0), (3, 1.0), (3, f32::NAN)] {
        let rank = RankRequest { basket: vec![w.queries[0].basket[0].clone()], ..Default::default() };
        let e = c.bundle(BundleRequest { request: Some(rank), size, discount }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let _ = stop.send(());
    handle.await.unwrap();
}

/// A policy's `diversity` re-ranks by maximal marginal relevance: the offers are less alike
/// (embedding cosine) while the best offer stays first.
#[test]
fn diversity_makes_the_offers_less_alike() {
    let w = world();
    let model = xsell_core::CrossSellModel::new(w.fitted.parts.clone()).unwrap();
    let unit = |j: u32| {
        let r = model.parts().emb_in.row(j as usize);
        let n = r.dot(&r).sqrt().max(1e-12);
        r.mapv(|v| v / n)
    };
    let alike = |r: &xsell_core::Ranking| {
        let v: Vec<_> = r.items.iter().map(|o| unit(o.item)).collect();
        let (mut s, mut n) = (0f32, 0);
        for a in 0..v.len() {
            for b in a + 1..v.len() {
                s += v[a].dot(&v[b]);
                n += 1;
            }
        }
        s / n.max(1) as f32
    };
    let diverse =
        xsell_core::Policies { unspecified: xsell_core::RankPolicy { diversity: 0.9, ..Default::default() }, ..Default::default() };
    let (mut plain_alike, mut diverse_alike, mut same_first, mut n) = (0f32, 0f32, 0, 0);
    for q in w.queries.iter().take(60) {
        let rq = core_query(q, 6);
        let (a, b) = (model.rank(&rq).unwrap(), model.rank_with(&rq, &diverse).unwrap());
        if a.items.len() < 6 || b.items.len() < 6 {
            continue;
        }
        n += 1;
        same_first += usize::from(a.items[0].item == b.items[0].item);
        plain_alike += alike(&a);
        diverse_alike += alike(&b);
    }
    assert!(n >= 30, "{n} queries with six offers");
    assert_eq!(same_first, n, "the best offer stays first");
    assert!(
        diverse_alike < plain_alike,
        "mean offer cosine {:.3} with diversity, {:.3} without",
        diverse_alike / n as f32,
        plain_alike / n as f32
    );
    let bad = xsell_core::RankPolicy { diversity: 1.5, ..Default::default() };
    assert!(bad.validate("policies.cart").unwrap_err().to_string().contains("policies.cart.diversity"));
}

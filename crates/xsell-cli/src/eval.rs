//! `xsell eval`: the offline protocol of PROTOCOL.md, for the model (in process or over gRPC)
//! and the built-in baselines.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use serde_json::json;
use xsell_core::baseline::{Cooccurrence, Popularity, Recommender};
use xsell_core::metrics::{Evaluator, Metrics, QueryTags};
use xsell_core::model::{ModelParts, Ranker, feature};
use xsell_core::protocol::{ProtocolConfig, Query, draw_queries, time_split};
use xsell_core::{CrossSellModel, ItemIx, OrderLog, RankQuery};

use crate::business::{AttachQueries, Business, Judge, ReturnEffect};
use crate::progress::Bars;
use crate::train::{CommonTrain, manifest, read_input};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Order log (parquet file, directory or glob).
    #[arg(long)]
    orders: String,
    #[command(flatten)]
    common: CommonTrain,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the queries as JSON lines here.
    #[arg(long)]
    queries_out: Option<PathBuf>,
    /// Replay the queries against this gRPC server (host:port or http://host:port) instead of
    /// training in process.
    #[arg(long)]
    server: Option<String>,
    /// Where the model trained on the training period is saved (serve it to replay over gRPC).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Model name for that bundle (default: eval-<file stem>).
    #[arg(long)]
    name: Option<String>,
    /// Write the reliability diagram (SVG) here (default: beside the report).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write a self-contained HTML report here: the metric table beside the baselines, hit@k
    /// curves, the reliability diagram, discovery, ablation and business measures, as charts.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Share of newest orders held out.
    #[arg(long, default_value_t = 0.10)]
    test_fraction: f64,
    /// Query seed.
    #[arg(long, default_value_t = 42)]
    query_seed: u64,
    /// At most this many queries.
    #[arg(long, default_value_t = 20_000)]
    max_queries: usize,
    /// Also report each stage alone (one feature as the whole ranker) and the ranker refitted
    /// without each feature group.
    #[arg(long)]
    ablation: bool,
    /// Also rank the queries with these candidate budgets (comma-separated): candidate recall,
    /// hit@10, mrr@20 and time per query for each, the recall/latency trade-off.
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Attribute the orders of --orders to the offers of this exposure log (the server's
    /// `[exposures] dir`, a file or a glob) instead of running the protocol: attachment rate,
    /// conversion, cross-sell revenue share, order values, return rate of cross-sold items.
    #[arg(long)]
    exposures: Option<String>,
    /// With --exposures: an exposure counts for its customer's first order within this many days.
    #[arg(long, default_value_t = 7.0)]
    attribution_days: f64,
}

/// Stages shown alone by `--ablation`: the feature that stands for each candidate source.
const STAGES: [(&str, usize); 6] = [
    ("ease", feature::EASE),
    ("co-occurrence", feature::COOC_MEAN),
    ("jaccard", feature::JACCARD_MEAN),
    ("embeddings", feature::EMB_COMP),
    ("history", feature::HIST_SHARE),
    ("popularity", feature::POPULARITY),
];

/// One system's ranked lists: items and, when it has them, probabilities.
type Lists = Vec<(Vec<String>, Option<Vec<f32>>)>;

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if let Some(spec) = &a.exposures {
        return attribute(&a, spec);
    }
    anyhow::ensure!(a.test_fraction > 0.0 && a.test_fraction < 1.0, "--test-fraction must be within (0, 1)");
    let cfg = xsell_train::TrainConfig { ablation: a.ablation, ..a.common.hyperparameters()? }.check()?;
    let (log, sha) = read_input(&a.orders, &a.common.column_map()?)?;
    let protocol = ProtocolConfig { test_fraction: a.test_fraction, seed: a.query_seed, max_queries: a.max_queries };
    let split = time_split(&log, protocol.test_fraction);
    let queries = draw_queries(&log, &split, &protocol);
    anyhow::ensure!(!queries.is_empty(), "{}: no eligible test query (test orders need 2+ items, all seen in training)", a.orders);
    tracing::info!(train_orders = split.train.len(), test_orders = split.test.len(), queries = queries.len(), "protocol split");
    if let Some(p) = &a.queries_out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?);
        for q in &queries {
            serde_json::to_writer(&mut f, q)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    let tags = Tagger::new(&log, &split.train);
    let n_train_items = tags.train_items.len();
    let mut systems: Vec<(String, Metrics, f64)> = Vec::new();
    // discovery (PROTOCOL.md): the novel-target queries, ranked again without the customer's past items
    let discovery_queries: Vec<Query> = queries.iter().filter(|q| tags.novel(q) == Some(true)).cloned().collect();
    let mut discovery: Vec<(String, Discovery)> = Vec::new();
    let mut train_seconds = None;
    let mut report_training = None;
    let mut recall: Vec<(&str, CandidateRecall)> = Vec::new();
    let mut budgets: Vec<(usize, f64, Metrics, f64)> = Vec::new();
    let attach = AttachQueries::of(&queries);
    let mut business: Vec<(String, Business)> = Vec::new();
    let mut return_effect = None;
    let mut latent = false;
    let model_version;
    if let Some(server) = &a.server {
        let t = Instant::now();
        let (version, lists) = remote(server, &queries, false)?;
        model_version = version;
        systems.push(("xsell".into(), judge(&queries, &lists, &tags, n_train_items), t.elapsed().as_secs_f64()));
        let (_, attach_lists) = remote(server, &attach.queries, false)?;
        business.push(("xsell".into(), Business::of(&queries, &lists, &attach, &attach_lists, &Judge::new(&log, None))));
        if !discovery_queries.is_empty() {
            let (_, lists) = remote(server, &discovery_queries, true)?;
            discovery.push(("xsell".into(), Discovery::of(&discovery_queries, &lists, &tags, n_train_items)));
        }
    } else {
        let name = a.name.clone().unwrap_or_else(|| format!("eval-{}", stem(&a.orders)));
        let dir = a.models.join(&name);
        xsell_model::check_writable(&dir).with_context(|| format!("the bundle cannot be written under {}", dir.display()))?;
        let t = Instant::now();
        let fitted = xsell_train::train(&log, &split.train, split.cutoff_ts, &cfg, &mut Bars::default())?;
        train_seconds = Some(t.elapsed().as_secs_f64());
        crate::train::print_summary(&fitted.report, 0.0, train_seconds.unwrap_or_default());
        let path = xsell_model::save(&dir, manifest(&name, &a.orders, &sha, &log, &cfg, &fitted), &fitted.parts)?;
        model_version = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        outln!(
            "model trained on the training period saved to {} (serve it with `xsell serve --name {name}` and replay with --server)",
            path.display()
        );
        let model = CrossSellModel::new(fitted.parts.clone())?;
        let t = Instant::now();
        let lists = local(&model, &queries, false)?;
        systems.push(("xsell".into(), judge(&queries, &lists, &tags, n_train_items), t.elapsed().as_secs_f64()));
        let judge_by = Judge::new(&log, Some(&model));
        latent = model.latent_kinds();
        business.push(("xsell".into(), Business::of(&queries, &lists, &attach, &local(&model, &attach.queries, false)?, &judge_by)));
        if model.parts().latent_substitutes || log.catalog.categories.iter().any(Option::is_some) {
            // what the substitute rule costs: the same model, substitutes allowed
            let allowing = |q: &Query| RankQuery { allow_substitutes: true, ..rank_query(q, false) };
            let t = Instant::now();
            let plain = local_with(&model, &queries, &allowing)?;
            systems.push(("xsell (substitutes)".into(), judge(&queries, &plain, &tags, n_train_items), t.elapsed().as_secs_f64()));
            let attach_lists = local_with(&model, &attach.queries, &allowing)?;
            business.push(("xsell (substitutes)".into(), Business::of(&queries, &plain, &attach, &attach_lists, &judge_by)));
        }
        if !log.returns.is_empty() {
            return_effect = Some(ReturnEffect::of(&model, &log, &queries, split.cutoff_ts)?);
        }
        let lists = local(&model, &discovery_queries, true)?;
        discovery.push(("xsell".into(), Discovery::of(&discovery_queries, &lists, &tags, n_train_items)));
        recall = vec![
            ("all queries", CandidateRecall::of(&model, &queries, false)?),
            ("discovery queries", CandidateRecall::of(&model, &discovery_queries, true)?),
        ];
        for &b in &a.budgets {
            let mut m = model.clone();
            m.set_budget(b)?;
            let t = Instant::now();
            let lists = local(&m, &queries, false)?;
            let secs = t.elapsed().as_secs_f64();
            budgets.push((b, CandidateRecall::of(&m, &queries, false)?.overall, judge(&queries, &lists, &tags, n_train_items), secs));
            if !discovery_queries.is_empty() {
                let lists = local(&m, &discovery_queries, true)?;
                discovery.push((format!("xsell (budget {b})"), Discovery::of(&discovery_queries, &lists, &tags, n_train_items)));
            }
        }
        if a.ablation {
            let variants = STAGES
                .iter()
                .map(|&(name, f)| (format!("only {name}"), Ranker::single(f)))
                .chain(fitted.ablations.iter().map(|(group, r)| (format!("w/o {group}"), r.clone())));
            for (name, ranker) in variants {
                let variant = CrossSellModel::new(ModelParts { ranker, ..fitted.parts.clone() })?;
                let t = Instant::now();
                let lists = local(&variant, &queries, false)?;
                let mut m = judge(&queries, &lists, &tags, n_train_items);
                m.ece = None; // single-feature scores are not probabilities
                systems.push((name, m, t.elapsed().as_secs_f64()));
            }
        }
        report_training = Some(fitted.report);
        let agg = &fitted.aggregates;
        let t = Instant::now();
        let peer = xsell_train::EasePeer::fit(&log, &split.train, split.cutoff_ts, &cfg)?;
        tracing::info!(items = peer.n_items(), alpha = peer.alpha, seconds = t.elapsed().as_secs_f64(), "EASE baseline fitted");
        let baselines: [(&str, &dyn Recommender); 3] =
            [("ease", &peer), ("cooccurrence", &Cooccurrence(agg)), ("popularity", &Popularity(agg))];
        let ix: HashMap<&str, ItemIx> = log.catalog.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as ItemIx)).collect();
        for (name, rec) in baselines {
            let t = Instant::now();
            let ranked = |qs: &[Query]| -> Lists {
                qs.par_iter()
                    .map(|q| {
                        let basket: Vec<ItemIx> = q.basket.iter().filter_map(|s| ix.get(s.as_str()).copied()).collect();
                        (rec.recommend(None, &basket, 20).into_iter().map(|i| log.catalog.ids[i as usize].clone()).collect(), None)
                    })
                    .collect()
            };
            let lists = ranked(&queries);
            systems.push((name.into(), judge(&queries, &lists, &tags, n_train_items), t.elapsed().as_secs_f64()));
            business.push((name.into(), Business::of(&queries, &lists, &attach, &ranked(&attach.queries), &judge_by)));
            // ranked the same way: the customer's past items left out of a longer list
            let lists: Lists = discovery_queries
                .par_iter()
                .map(|q| {
                    let basket: Vec<ItemIx> = q.basket.iter().filter_map(|s| ix.get(s.as_str()).copied()).collect();
                    let past = tags.past_items(q);
                    let ranked = rec.recommend(None, &basket, 20 + past.len());
                    (ranked.into_iter().filter(|i| !past.contains(i)).take(20).map(|i| log.catalog.ids[i as usize].clone()).collect(), None)
                })
                .collect();
            discovery.push((name.into(), Discovery::of(&discovery_queries, &lists, &tags, n_train_items)));
        }
    }
    print_table(&a.orders, &split, queries.len(), &systems, train_seconds);
    print_discovery(&discovery);
    crate::business::print(&business, latent);
    if let Some(r) = &return_effect {
        r.print();
    }
    for (name, r) in &recall {
        r.print(name);
    }
    if !budgets.is_empty() {
        outln!("\ncandidate budget trade-off (all queries, one ranking per query over {} threads):", rayon::current_num_threads());
        outln!("{:>8} {:>9} {:>7} {:>7} {:>12}", "budget", "recall", "hit@10", "mrr@20", "ms/query");
        for (b, r, m, secs) in &budgets {
            outln!(
                "{:>8} {:>9.4} {:>7.4} {:>7.4} {:>12.3}",
                b,
                r,
                m.hit10,
                m.mrr20,
                secs * 1e3 * rayon::current_num_threads() as f64 / queries.len() as f64
            );
        }
    }
    if let Some(path) = &a.html {
        let page = crate::html::Page {
            dataset: &a.orders,
            model_version: &model_version,
            queries: queries.len(),
            train_seconds,
            systems: &systems,
            discovery: discovery.iter().map(|(n, d)| (n.clone(), d.queries, d.hit10, d.mrr20, d.se)).collect(),
            business: &business,
            return_effect: return_effect.as_ref(),
            reliability_svg: systems.iter().find(|(n, _, _)| n == "xsell").map(|(_, m, _)| reliability_svg(m)),
        };
        std::fs::write(path, page.render()).with_context(|| format!("writing {}", path.display()))?;
        outln!("html report: {}", path.display());
    }
    if let Some(report) = &a.report {
        let sys: serde_json::Map<String, serde_json::Value> = systems
            .iter()
            .map(|(n, m, secs)| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["rank_seconds"] = json!(secs);
                if let Some((_, d)) = discovery.iter().find(|(s, _)| s == n) {
                    v["discovery"] = json!({ "queries": d.queries, "hit@10": d.hit10, "mrr@20": d.mrr20, "hit@10_se": d.se });
                }
                (n.clone(), v)
            })
            .collect();
        let doc = json!({
            "dataset": a.orders,
            "sha256": sha,
            "protocol": { "seed": protocol.seed, "test_fraction": protocol.test_fraction, "max_queries": protocol.max_queries },
            "model_version": model_version,
            "mode": if a.server.is_some() { "grpc" } else { "in-process" },
            "train_orders": split.train.len(),
            "test_orders": split.test.len(),
            "queries": queries.len(),
            "train_seconds": train_seconds,
            "hyperparameters": cfg,
            "training": report_training,
            "systems": sys,
            "business": business.iter().map(|(n, b)| (n.clone(), json!(b))).collect::<serde_json::Map<_, _>>(),
            "return_effect": return_effect,
            "candidate_recall": recall.iter().map(|(name, r)| (name.to_string(), r.json())).collect::<serde_json::Map<_, _>>(),
            "budgets": budgets.iter().map(|(b, r, m, secs)| json!({
                "budget": b, "recall": r, "hit@10": m.hit10, "mrr@20": m.mrr20, "rank_seconds": secs
            })).collect::<Vec<_>>(),
        });
        std::fs::write(report, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", report.display()))?;
        outln!("report: {}", report.display());
        let plot = a.plot.clone().unwrap_or_else(|| report.with_extension("reliability.svg"));
        if let Some((_, m, _)) = systems.iter().find(|(n, _, _)| n == "xsell") {
            std::fs::write(&plot, reliability_svg(m)).with_context(|| format!("writing {}", plot.display()))?;
            outln!("reliability diagram: {}", plot.display());
        }
    }
    Ok(())
}

/// `--exposures`: the online measures from the server's exposure log.
fn attribute(a: &EvalArgs, spec: &str) -> anyhow::Result<()> {
    anyhow::ensure!(a.attribution_days.is_finite() && a.attribution_days > 0.0, "--attribution-days must be a positive number of days");
    let (log, sha) = read_input(&a.orders, &a.common.column_map()?)?;
    let exposures = crate::attribution::read_exposures(spec)?;
    let r = crate::attribution::attribute(&log, &exposures, (a.attribution_days * 86_400_000.0) as i64);
    r.print(a.attribution_days);
    if let Some(report) = &a.report {
        let doc =
            json!({ "dataset": a.orders, "sha256": sha, "exposures": spec, "attribution_days": a.attribution_days, "attribution": r });
        std::fs::write(report, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", report.display()))?;
        outln!("report: {}", report.display());
    }
    Ok(())
}

fn stem(spec: &str) -> String {
    let p = std::path::Path::new(spec);
    p.file_stem()
        .map(|s| s.to_string_lossy().replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_"))
        .unwrap_or_else(|| "orders".into())
}

/// The protocol's ranking request for a query: top 20, basket excluded (and, for the discovery
/// evaluation, the customer's past items).
pub fn rank_query(q: &Query, new_to_customer: bool) -> RankQuery {
    RankQuery { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k: 20, new_to_customer, ..Default::default() }
}

fn local(model: &CrossSellModel, queries: &[Query], new_to_customer: bool) -> anyhow::Result<Lists> {
    local_with(model, queries, &|q| rank_query(q, new_to_customer))
}

fn local_with(model: &CrossSellModel, queries: &[Query], request: &(dyn Fn(&Query) -> RankQuery + Sync)) -> anyhow::Result<Lists> {
    queries
        .par_iter()
        .map(|q| {
            let r = model.rank(&request(q))?;
            let items = r.items.iter().map(|i| model.parts().items.ids[i.item as usize].clone()).collect();
            Ok((items, Some(r.items.iter().map(|i| i.probability).collect())))
        })
        .collect()
}

fn remote(server: &str, queries: &[Query], new_to_customer: bool) -> anyhow::Result<(String, Lists)> {
    use xsell_proto::v1::ModelInfoRequest;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = crate::client::connect(server).await?;
        let info = client.model_info(crate::client::authed(ModelInfoRequest {})).await?.into_inner();
        tracing::info!(model = %info.name, version = %info.version, "replaying queries over gRPC");
        let mut lists = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(200) {
            rank_chunk(&mut client, chunk, new_to_customer, &mut lists).await?;
        }
        Ok((info.version, lists))
    })
}

/// Ranks a chunk of queries in one `RankBatch`; a chunk the server finds too costly
/// (RESOURCE_EXHAUSTED: its work budget) is split in halves.
async fn rank_chunk(client: &mut crate::client::Client, chunk: &[Query], new_to_customer: bool, lists: &mut Lists) -> anyhow::Result<()> {
    use xsell_proto::v1::{RankBatchRequest, RankRequest};
    let requests = chunk
        .iter()
        .map(|q| RankRequest { customer_id: q.customer_id.clone(), basket: q.basket.clone(), k: 20, new_to_customer, ..Default::default() })
        .collect();
    match client.rank_batch(crate::client::authed(RankBatchRequest { requests })).await {
        Ok(resp) => {
            for r in resp.into_inner().responses {
                lists.push((r.items.iter().map(|i| i.item_id.clone()).collect(), Some(r.items.iter().map(|i| i.probability).collect())));
            }
            Ok(())
        }
        Err(s) if s.code() == tonic::Code::ResourceExhausted && chunk.len() > 1 => {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            Box::pin(rank_chunk(client, a, new_to_customer, lists)).await?;
            Box::pin(rank_chunk(client, b, new_to_customer, lists)).await
        }
        Err(s) => Err(s.into()),
    }
}

/// Facts from the training period that the cross-sell specific metrics need.
struct Tagger<'a> {
    log: &'a OrderLog,
    train_items: HashSet<ItemIx>,
    bought: HashSet<(u32, ItemIx)>,
    past: HashMap<u32, HashSet<ItemIx>>,
    ix: HashMap<&'a str, ItemIx>,
    customer_ix: HashMap<&'a str, u32>,
    has_categories: bool,
}

impl<'a> Tagger<'a> {
    fn new(log: &'a OrderLog, train: &[usize]) -> Self {
        let mut train_items = HashSet::new();
        let mut bought = HashSet::new();
        let mut past: HashMap<u32, HashSet<ItemIx>> = HashMap::new();
        for &o in train {
            let order = &log.orders[o];
            for &i in &order.items {
                train_items.insert(i);
                if let Some(c) = order.customer {
                    bought.insert((c, i));
                    past.entry(c).or_default().insert(i);
                }
            }
        }
        Tagger {
            log,
            train_items,
            bought,
            past,
            ix: log.catalog.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as ItemIx)).collect(),
            customer_ix: log.customers.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect(),
            has_categories: log.catalog.categories.iter().any(Option::is_some),
        }
    }

    /// Whether a query's target is new to its (known) customer; `None` without a known customer.
    fn novel(&self, q: &Query) -> Option<bool> {
        let c = *self.customer_ix.get(q.customer_id.as_deref()?)?;
        let t = *self.ix.get(q.target.as_str())?;
        Some(!self.bought.contains(&(c, t)))
    }

    /// The items the query's customer bought in training.
    fn past_items(&self, q: &Query) -> HashSet<ItemIx> {
        let Some(&c) = q.customer_id.as_deref().and_then(|c| self.customer_ix.get(c)) else { return HashSet::new() };
        self.past.get(&c).cloned().unwrap_or_default()
    }

    fn category(&self, id: &str) -> Option<&str> {
        self.ix.get(id).and_then(|&i| self.log.catalog.categories[i as usize].as_deref())
    }

    fn tags(&self, q: &Query, ranked: &[String]) -> QueryTags {
        let novel_target = q.customer_id.as_deref().and_then(|c| self.customer_ix.get(c)).map(|&c| {
            let t = self.ix[q.target.as_str()];
            !self.bought.contains(&(c, t))
        });
        if !self.has_categories {
            return QueryTags { novel_target, ..Default::default() };
        }
        let basket_cats: HashSet<&str> = q.basket.iter().filter_map(|b| self.category(b)).collect();
        let cross_category = self.category(&q.target).map(|c| !basket_cats.contains(c));
        let judged: Vec<bool> = ranked.iter().take(10).filter_map(|r| self.category(r)).map(|c| basket_cats.contains(c)).collect();
        QueryTags { novel_target, cross_category, same_category_top10: Some((judged.iter().filter(|&&s| s).count(), judged.len())) }
    }
}

/// Share of test targets inside the candidate set ranking scores, overall and per source.
struct CandidateRecall {
    queries: usize,
    budget: usize,
    overall: f64,
    mean_candidates: f64,
    /// Per source: share of targets its taken part held, and share only it held.
    sources: Vec<(&'static str, f64, f64)>,
}

impl CandidateRecall {
    fn of(model: &CrossSellModel, queries: &[Query], new_to_customer: bool) -> anyhow::Result<Self> {
        use xsell_core::retrieval::SOURCES;
        let per_query: Vec<(usize, Option<u8>)> = queries
            .par_iter()
            .map(|q| {
                let c = model.candidates(&rank_query(q, new_to_customer))?;
                let t = model.item(&q.target);
                let bits = t.and_then(|t| c.items.iter().position(|&j| j == t)).map(|r| c.sources[r]);
                Ok((c.items.len(), bits))
            })
            .collect::<anyhow::Result<_>>()?;
        let n = queries.len().max(1) as f64;
        let share = |f: &dyn Fn(u8) -> bool| per_query.iter().filter(|(_, b)| b.is_some_and(f)).count() as f64 / n;
        Ok(CandidateRecall {
            queries: queries.len(),
            budget: model.budget(),
            overall: share(&|_| true),
            mean_candidates: per_query.iter().map(|(m, _)| *m as f64).sum::<f64>() / n,
            sources: SOURCES.iter().map(|s| (s.name(), share(&|b| b & s.bit() != 0), share(&|b| b == s.bit()))).collect(),
        })
    }

    fn print(&self, what: &str) {
        if self.queries == 0 {
            return;
        }
        outln!(
            "\ncandidate recall, {what} ({}; budget {}, {:.0} candidates on average): {:.4}",
            self.queries,
            self.budget,
            self.mean_candidates,
            self.overall
        );
        outln!("{:<16} {:>8} {:>8}", "source", "recall", "only it");
        for (name, r, only) in &self.sources {
            outln!("{:<16} {:>8.4} {:>8.4}", name, r, only);
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "queries": self.queries,
            "budget": self.budget,
            "recall": self.overall,
            "mean_candidates": self.mean_candidates,
            "sources": self.sources.iter().map(|(n, r, o)| (n.to_string(), json!({ "recall": r, "only": o }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// The discovery figures of one system.
struct Discovery {
    queries: usize,
    hit10: f64,
    mrr20: f64,
    /// Standard error of hit@10, √(p(1−p)/n).
    se: f64,
}

impl Discovery {
    fn of(queries: &[Query], lists: &Lists, tags: &Tagger<'_>, n_train_items: usize) -> Self {
        let m = judge(queries, lists, tags, n_train_items);
        let n = queries.len();
        let se = if n > 0 { (m.hit10 * (1.0 - m.hit10) / n as f64).sqrt() } else { f64::NAN };
        Discovery { queries: n, hit10: m.hit10, mrr20: m.mrr20, se }
    }
}

fn print_discovery(systems: &[(String, Discovery)]) {
    let Some((_, first)) = systems.first().filter(|(_, d)| d.queries > 0) else {
        outln!("\ndiscovery: no novel-target query (no known customer bought something new)");
        return;
    };
    outln!("\ndiscovery ({} novel-target queries, the customer's past items excluded):", first.queries);
    outln!("{:<24} {:>7} {:>9} {:>7}", "system", "hit@10", "(± se)", "mrr@20");
    for (name, d) in systems {
        outln!("{:<24} {:>7.4} {:>9} {:>7.4}", name, d.hit10, format!("±{:.4}", d.se), d.mrr20);
    }
}

fn judge(queries: &[Query], lists: &Lists, tags: &Tagger<'_>, n_train_items: usize) -> Metrics {
    let mut ev = Evaluator::new();
    for (q, (ranked, probs)) in queries.iter().zip(lists) {
        // the protocol removes basket items before scoring (ours never returns them anyway)
        let ranked: Vec<String> = ranked.iter().filter(|r| !q.basket.contains(r)).cloned().collect();
        ev.add(&ranked, probs.as_deref(), &q.target, tags.tags(q, &ranked));
    }
    ev.finish(n_train_items)
}

fn print_table(
    dataset: &str,
    split: &xsell_core::protocol::Split,
    n: usize,
    systems: &[(String, Metrics, f64)],
    train_seconds: Option<f64>,
) {
    outln!("\n{dataset}: {} train orders, {} test orders, {n} queries", split.train.len(), split.test.len());
    if let Some(t) = train_seconds {
        outln!("xsell training time: {t:.1}s");
    }
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    outln!(
        "{:<24} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "system",
        "hit@5",
        "hit@10",
        "hit@20",
        "mrr@20",
        "ndcg@10",
        "cov@10",
        "novel@10",
        "cross@10",
        "samecat",
        "ece",
        "rank s"
    );
    for (name, m, secs) in systems {
        outln!(
            "{:<24} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>9} {:>9} {:>9} {:>7} {:>8.2}",
            name,
            m.hit5,
            m.hit10,
            m.hit20,
            m.mrr20,
            m.ndcg10,
            m.coverage10,
            opt(m.novel_hit10),
            opt(m.cross_category_hit10),
            opt(m.same_category_share10),
            opt(m.ece),
            secs
        );
    }
}

/// A reliability diagram: mean predicted probability against observed rate per bin.
fn reliability_svg(m: &Metrics) -> String {
    let (w, h, pad) = (420.0, 420.0, 40.0);
    let max_p = m.calibration.iter().filter(|b| b.count > 0).map(|b| b.mean_predicted.max(b.observed)).fold(0.05f64, f64::max).min(1.0);
    let sx = |v: f64| pad + v / max_p * (w - 2.0 * pad);
    let sy = |v: f64| h - pad - v / max_p * (h - 2.0 * pad);
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#);
    s += &format!(
        r#"<rect width="{w}" height="{h}" fill="white"/><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="gray" stroke-dasharray="4"/>"#,
        sx(0.0),
        sy(0.0),
        sx(max_p),
        sy(max_p)
    );
    s += &format!(
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>"#,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    let pts: Vec<String> =
        m.calibration.iter().filter(|b| b.count > 0).map(|b| format!("{:.1},{:.1}", sx(b.mean_predicted), sy(b.observed))).collect();
    s += &format!(r#"<polyline points="{}" fill="none" stroke="steelblue" stroke-width="2"/>"#, pts.join(" "));
    for b in m.calibration.iter().filter(|b| b.count > 0) {
        s += &format!(
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="steelblue"><title>n={}</title></circle>"#,
            sx(b.mean_predicted),
            sy(b.observed),
            b.count
        );
    }
    s += &format!(r#"<text x="{}" y="{}" text-anchor="middle">mean predicted probability (0 to {max_p:.2})</text>"#, w / 2.0, h - 10.0);
    s += &format!(r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">observed rate</text>"#, h / 2.0, h / 2.0);
    s += &format!(
        r#"<text x="{}" y="20" text-anchor="middle">reliability, top-10 offers, ECE = {}</text></svg>"#,
        w / 2.0,
        m.ece.map(|e| format!("{e:.4}")).unwrap_or_default()
    );
    s
}

//! `xsell train --update`: counts folded into a bundle's stored tally equal the counts of the
//! union, and the model refitted from them is the model a full retrain on the union makes.

use std::collections::HashMap;
use std::path::Path;

use xsell_core::aggregate::AggregateConfig;
use xsell_core::protocol::chronological;
use xsell_core::tally::{MergeError, Tally, Track};
use xsell_core::{Aggregates, OrderLog};
use xsell_data::generate::{GenerateConfig, generate};
use xsell_data::{RawLine, write_lines};
use xsell_train::{Choices, NoProgress, TrainConfig};

/// A generated log as read from three files: the older 85 % of its orders (and the returns
/// before them), the newer rest, and both together. The newer orders bring new customers and
/// new items (one model of each category is replaced).
fn logs(dir: &Path) -> (OrderLog, OrderLog, OrderLog) {
    let (lines, _) = generate(&GenerateConfig { orders: 2_000, customers: 1_000, ..Default::default() });
    let mut first: HashMap<&str, i64> = HashMap::new();
    for l in lines.iter().filter(|l| !l.is_return) {
        let t = first.entry(l.order_id.as_str()).or_insert(i64::MAX);
        *t = (*t).min(l.ts.unwrap());
    }
    let mut times: Vec<i64> = first.values().copied().collect();
    times.sort_unstable();
    let cut = times[times.len() * 85 / 100];
    let older = |l: &RawLine| if l.is_return { l.ts.unwrap() < cut } else { first[l.order_id.as_str()] < cut };
    let (old, mut new): (Vec<RawLine>, Vec<RawLine>) = lines.iter().cloned().partition(older);
    for l in new.iter_mut().filter(|l| l.item_id.ends_with("-01")) {
        l.item_id.push_str("-new");
    }
    let read = |name: &str, ls: &[RawLine]| {
        let p = dir.join(name);
        write_lines(&p, ls).unwrap();
        xsell_data::read_log(&p.to_string_lossy()).unwrap()
    };
    let union: Vec<RawLine> = old.iter().chain(&new).cloned().collect();
    (read("old.parquet", &old), read("new.parquet", &new), read("all.parquet", &union))
}

fn assert_same_aggregates(a: &Aggregates, b: &Aggregates) {
    assert_eq!((a.n_orders, a.n_recent), (b.n_orders, b.n_recent));
    assert_eq!(a.item_orders, b.item_orders, "item orders");
    assert_eq!(a.item_recent_orders, b.item_recent_orders, "recent item orders");
    assert_eq!(a.item_returns, b.item_returns, "item returns");
    assert_eq!((&a.customer_orders, &a.customer_lines, &a.customer_returns), (&b.customer_orders, &b.customer_lines, &b.customer_returns));
    assert_eq!(a.pairs, b.pairs, "co-purchase pairs");
    assert_eq!((&a.history, &a.since), (&b.history, &b.since), "history");
    assert_eq!((&a.gram_items, &a.gram), (&b.gram_items, &b.gram), "Gram");
    assert_eq!((&a.gram_pairs, &a.pair_gram), (&b.gram_pairs, &b.pair_gram), "pair Gram rows");
}

/// Equal tallies; prices compared as numbers (NaN for items never sold with a price).
fn assert_same_tally(a: &Tally, b: &Tally) {
    let c = (&a.catalog, &b.catalog);
    assert_eq!((&c.0.ids, &c.0.names, &c.0.categories), (&c.1.ids, &c.1.names, &c.1.categories), "catalog");
    for (k, (x, y)) in c.0.prices.iter().zip(&c.1.prices).enumerate() {
        assert!(x == y || (x.is_nan() && y.is_nan()), "price of item {k}: {x} vs {y}");
        let (s, t) = (c.0.price_sums[k], c.1.price_sums[k]);
        assert!(s.1 == t.1 && (s.0 - t.0).abs() <= 1e-9 * s.0.abs(), "price sums of item {k}: {s:?} vs {t:?}");
    }
    let strip = |t: &Tally| Tally { catalog: Default::default(), ..t.clone() };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn a_tally_gives_the_aggregates_of_its_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, all) = logs(tmp.path());
    let chrono = chronological(&all);
    // few neighbours (ties at the cut), a small order cap (some orders leave the pair counts)
    let cfg = AggregateConfig { max_neighbours: 4, gram_items: 25, gram_pairs: 12, recent_fraction: 0.2, max_order_items: 3 };
    let tally = Tally::compute(&all, &chrono, &cfg, None, Track::Strongest);
    let want = Aggregates::compute(&all, &chrono, None, &cfg);
    assert!(want.gram_pairs.len() >= 6 && want.pairs.indices.len() > 100, "the comparison covers pairs");
    assert_same_aggregates(&tally.aggregates(&cfg), &want);
    // and as parquet tables: written and read back unchanged
    xsell_data::tally::write_tally(&tmp.path().join("agg"), &tally).unwrap();
    assert_same_tally(&xsell_data::tally::read_tally(&tmp.path().join("agg")).unwrap(), &tally);
}

#[test]
fn newer_orders_fold_into_a_tally_as_into_the_union() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new, all) = logs(tmp.path());
    assert!(all.catalog.len() > old.catalog.len() && all.customers.len() > old.customers.len(), "new items and customers");
    let cfg = AggregateConfig { max_neighbours: 4, gram_items: 25, gram_pairs: 12, recent_fraction: 0.2, max_order_items: 3 };
    let older = Tally::compute(&old, &chronological(&old), &cfg, None, Track::Strongest);
    let tracked = older.tracked_in(&new);
    let newer = Tally::compute(&new, &chronological(&new), &cfg, Some(new.orders.len()), Track::Given(&tracked));
    let merged = older.clone().merge(&newer, &cfg).unwrap();
    // the union counted at once, tracking the older tally's pairs (its indices are the union's:
    // the older lines come first)
    let union = Tally::compute(&all, &chronological(&all), &cfg, None, Track::Given(&older.tracked));
    assert_same_tally(&merged, &union);
    assert_same_aggregates(&merged.aggregates(&cfg), &union.aggregates(&cfg));

    // older orders are refused, as is a merge with different pair rules
    assert!(matches!(merged.clone().merge(&newer, &cfg), Err(MergeError::NotNewer { .. })));
    let other = Tally { max_order_items: 7, ..newer.clone() };
    assert!(matches!(older.merge(&other, &cfg), Err(MergeError::PairRule { .. })));
}

#[test]
fn an_update_makes_the_model_a_full_retrain_on_the_union_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new, all) = logs(tmp.path());
    let cfg = TrainConfig::parse_json(r#"{"dim": 8, "max_steps": 100, "ranker_epochs": 5, "ranker_hidden": 0, "ease_items": 60}"#)
        .unwrap()
        .check()
        .unwrap();
    let full = xsell_train::train(&all, &chronological(&all), None, &cfg, &mut NoProgress).unwrap();
    let full_tally = full.tally.as_ref().expect("an in-process retrain keeps its tally");
    assert!(full.report.ease.as_ref().is_some_and(|e| e.pairs > 0), "the model uses pairs: {:?}", full.report.ease);
    // the bundle the update starts from tracks the pairs the full retrain chose
    let n_old = old.catalog.len() as u32;
    assert!(full_tally.tracked.iter().all(|&(i, j)| i < n_old && j < n_old), "the chosen pairs are of older items");
    let agg_cfg = cfg.aggregate_config();
    let stored = Tally::compute(&old, &chronological(&old), &agg_cfg, None, Track::Given(&full_tally.tracked));
    let tracked = stored.tracked_in(&new);
    let newer = Tally::compute(&new, &chronological(&new), &agg_cfg, Some(new.orders.len()), Track::Given(&tracked));
    let choices = Choices::of_bundle(&full.parts, &full.report);
    let updated = xsell_train::update(stored.clone(), &newer, &choices, &full.report, &cfg, None, &mut NoProgress).unwrap();
    assert_same_tally(updated.tally.as_ref().unwrap(), full_tally);
    assert_eq!(updated.parts, full.parts, "the updated model is the retrained one");

    // warm: the same counts and EASE, the embeddings continued from the model's for a tenth of
    // the steps
    let warm = xsell_train::Warm { parts: &full.parts, steps_share: 0.1 };
    let warmed = xsell_train::update(stored, &newer, &choices, &full.report, &cfg, Some(warm), &mut NoProgress).unwrap();
    let (w, f) = (&warmed.parts, &full.parts);
    assert_same_tally(warmed.tally.as_ref().unwrap(), full_tally);
    assert_eq!((&w.items, &w.pairs, &w.history, &w.ease), (&f.items, &f.pairs, &f.history, &f.ease));
    assert_ne!(w.emb_in, f.emb_in, "the embeddings are not refitted from scratch");
    let moved = (&w.emb_in - &f.emb_in).mapv(f32::abs).mean().unwrap() / f.emb_in.mapv(f32::abs).mean().unwrap();
    assert!(moved < 0.5, "they continue from the model's: moved {moved}");
}

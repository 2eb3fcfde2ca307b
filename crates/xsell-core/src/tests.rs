use ndarray::Array2;

use crate::metrics::{Evaluator, QueryTags};
use crate::model::{CustomerTable, ItemTable, ModelParts, N_FEATURES, PairWeights, Ranker};
use crate::protocol::{ProtocolConfig, draw_queries, time_split};
use crate::*;
use crate::{aggregate, names};

fn line<'a>(order: &'a str, customer: Option<&'a str>, item: &'a str, qty: i64, ts: Option<i64>, ret: bool) -> LogLine<'a> {
    LogLine { order_id: Some(order), customer_id: customer, item_id: Some(item), quantity: qty, ts, is_return: ret, ..Default::default() }
}

/// (order id, customer, items, time)
type TestOrder<'a> = (&'a str, Option<&'a str>, &'a [&'a str], Option<i64>);

fn log_of(orders: &[TestOrder<'_>]) -> OrderLog {
    let mut b = LogBuilder::new();
    for &(o, c, items, ts) in orders {
        for it in items {
            b.push(line(o, c, it, 1, ts, false));
        }
    }
    b.finish().unwrap()
}

#[test]
fn cleaning_and_collapsing_follow_the_protocol() {
    let mut b = LogBuilder::new();
    b.push(line("1", Some("c1"), "a", 1, Some(20), false));
    b.push(line("1", Some("c2"), "b", 2, Some(10), false)); // customer of the first line wins
    b.push(line("1", Some("c1"), "a", 1, Some(30), false)); // duplicate item collapses
    b.push(line("C2", Some("c1"), "a", -1, Some(40), true)); // return
    b.push(line("3", Some("c1"), "c", -5, Some(50), false)); // negative quantity = return signal
    b.push(LogLine { order_id: None, item_id: Some("z"), quantity: 1, ..Default::default() });
    let log = b.finish().unwrap();
    assert_eq!(log.orders.len(), 1);
    let o = &log.orders[0];
    assert_eq!(o.items.len(), 2);
    assert_eq!(o.ts, Some(10), "an order's time is its earliest line's");
    assert_eq!(log.customers[o.customer.unwrap() as usize], "c1");
    assert_eq!(log.returns.len(), 2);
    assert_eq!((log.lines_read, log.lines_dropped), (6, 1));
}

#[test]
fn an_empty_log_is_an_error() {
    let mut b = LogBuilder::new();
    b.push(line("1", None, "a", -1, None, true));
    assert_eq!(b.finish().unwrap_err(), Error::EmptyLog);
}

#[test]
fn time_split_sorts_by_time_then_numeric_id() {
    let log = log_of(&[
        ("10", None, &["a", "b"], Some(5)),
        ("9", None, &["a", "b"], Some(5)),
        ("100", None, &["a"], None),
        ("2", None, &["a", "c"], Some(7)),
    ]);
    let split = time_split(&log, 0.5);
    let ids = |v: &[usize]| v.iter().map(|&o| log.orders[o].id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&split.train), ["100", "9"], "untimed orders first; 9 < 10 as integers");
    assert_eq!(ids(&split.test), ["10", "2"]);
    assert_eq!(split.cutoff_ts, Some(5));
}

#[test]
fn queries_are_eligible_deterministic_and_capped() {
    let mut orders: Vec<(String, Vec<&str>)> = (0..50).map(|k| (k.to_string(), vec!["a", "b", "c"])).collect();
    orders.push(("50".into(), vec!["a", "new"])); // target could be unseen: not eligible
    orders.push(("51".into(), vec!["a"])); // single item: not eligible
    let mut b = LogBuilder::new();
    for (k, (o, items)) in orders.iter().enumerate() {
        for it in items {
            b.push(line(o, Some("c"), it, 1, Some(k as i64), false));
        }
    }
    let log = b.finish().unwrap();
    let split = time_split(&log, 0.2);
    let cfg = ProtocolConfig { max_queries: 5, ..Default::default() };
    let q = draw_queries(&log, &split, &cfg);
    assert_eq!(q.len(), 5);
    assert_eq!(q, draw_queries(&log, &split, &cfg), "same seed, same queries");
    for query in &q {
        assert_eq!(query.basket.len(), 2);
        assert!(!query.basket.contains(&query.target));
    }
}

/// The targets a NumPy script draws over the same baskets (items in line order):
/// `rng = np.random.default_rng(42); [b[int(rng.random() * len(b))] for b in baskets]`
/// printed `['z', 'y', 'w', 'z']`.
#[test]
fn queries_are_the_ones_numpy_default_rng_draws() {
    let test: [&[&str]; 4] = [&["x", "y", "z"], &["y", "x"], &["z", "x", "y", "w"], &["w", "z"]];
    let ids: Vec<String> = (1..=40).map(|k| k.to_string()).collect();
    let mut orders: Vec<TestOrder<'_>> = (0..36).map(|k| (ids[k].as_str(), None, &["x", "y", "z", "w"][..], None)).collect();
    orders.extend(test.iter().enumerate().map(|(k, &items)| (ids[36 + k].as_str(), None, items, None)));
    let log = log_of(&orders);
    let split = time_split(&log, 0.1);
    let q = draw_queries(&log, &split, &ProtocolConfig::default());
    let got: Vec<(&str, Vec<&str>)> = q.iter().map(|q| (q.target.as_str(), q.basket.iter().map(String::as_str).collect())).collect();
    let want = vec![("z", vec!["x", "y"]), ("y", vec!["x"]), ("w", vec!["z", "x", "y"]), ("z", vec!["w"])];
    assert_eq!(got, want);
}

#[test]
fn metrics_on_a_hand_example() {
    let mut ev = Evaluator::new();
    let ranked: Vec<String> = (0..20).map(|k| k.to_string()).collect();
    ev.add(&ranked, Some(&[0.9; 20]), "0", QueryTags::default()); // rank 1
    ev.add(&ranked, Some(&[0.1; 20]), "9", QueryTags::default()); // rank 10
    ev.add(&ranked, None, "x", QueryTags::default()); // miss
    let m = ev.finish(40);
    assert_eq!(m.queries, 3);
    assert!((m.hit5 - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.hit10 - 2.0 / 3.0).abs() < 1e-12);
    assert!((m.mrr20 - (1.0 + 0.1) / 3.0).abs() < 1e-12);
    assert!((m.ndcg10 - (1.0 + 1.0 / 11f64.log2()) / 3.0).abs() < 1e-12);
    assert!((m.coverage10 - 10.0 / 40.0).abs() < 1e-12);
    // bin 9: ten predictions at 0.9, one hit; bin 1: ten at 0.1, one hit
    let ece = m.ece.unwrap();
    assert!((ece - 0.5 * (0.9 - 0.1) - 0.5 * 0.0).abs() < 1e-6, "ece {ece}");
}

/// A 4-item model: a camera (0), its card (1), another camera (2), a popular cable (3).
fn tiny_model() -> CrossSellModel {
    let items = ItemTable {
        ids: ["cam1", "card", "cam2", "cable"].map(String::from).to_vec(),
        names: vec![Some("Camera 1".into()), Some("Card".into()), None, None],
        categories: vec![Some("cameras".into()), Some("cards".into()), Some("cameras".into()), Some("cables".into())],
        prices: vec![300.0, 20.0, 350.0, 5.0],
        orders: vec![40.0, 30.0, 40.0, 60.0],
        recent_orders: vec![4.0, 3.0, 4.0, 6.0],
        return_rate: vec![0.0; 4],
    };
    let pairs = Csr::from_rows([vec![(1, 25.0), (3, 5.0)], vec![(0, 25.0)], vec![(3, 2.0)], vec![(0, 5.0), (2, 2.0)]]);
    let customers = CustomerTable { ids: vec!["loyal".into(), "returner".into()], orders: vec![5.0, 20.0], return_rate: vec![0.0, 0.8] };
    let history = Csr::from_rows([vec![(3, 4.0)], vec![(1, 1.0)]]);
    let parts = ModelParts {
        items,
        customers,
        customer_lines: vec![10.0, 40.0],
        pairs,
        since: Csr::from_rows([vec![(3, 0.0)], vec![(1, 2.0)]]).into(),
        history: history.into(),
        ease: Csr::from_rows(vec![Vec::new(); 4]),
        ease_pairs: Default::default(),
        ease_always_on: Vec::new(),
        latent_categories: Vec::new(),
        latent_substitutes: false,
        emb_in: Array2::from_shape_fn((4, 2), |(i, d)| (i + d) as f32 * 0.1),
        emb_out: Array2::from_shape_fn((4, 2), |(i, d)| (i * d) as f32 * 0.1),
        n_orders: 100.0,
        n_recent: 10.0,
        ranker: Ranker {
            mean: vec![0.0; N_FEATURES],
            scale: vec![1.0; N_FEATURES],
            weights: vec![4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0],
            bias: 0.0,
            hidden: Vec::new(),
            hidden_bias: Vec::new(),
            hidden_out: Vec::new(),
            calib_a: 1.0,
            calib_b: -2.0,
        },
        discovery_ranker: None,
        neighbours: Default::default(),
        retrieval: Default::default(),
    };
    CrossSellModel::new(parts).unwrap()
}

fn ids(m: &CrossSellModel, r: &Ranking) -> Vec<String> {
    r.items.iter().map(|i| m.parts().items.ids[i.item as usize].clone()).collect()
}

fn q(basket: &[&str], k: usize) -> RankQuery {
    RankQuery { basket: basket.iter().map(|s| s.to_string()).collect(), k, ..Default::default() }
}

#[test]
fn ranking_offers_complements_not_basket_items_nor_substitutes() {
    let m = tiny_model();
    let r = m.rank(&q(&["cam1"], 3)).unwrap();
    let got = ids(&m, &r);
    assert_eq!(got[0], "card");
    assert!(!got.contains(&"cam1".to_string()), "basket items are never offered");
    assert!(!got.contains(&"cam2".to_string()), "a substitute camera is not a cross-sell");
    assert_eq!(m.explain(r.items[0].reason).1, "often bought with Camera 1");
    let with_subs = m.rank(&RankQuery { allow_substitutes: true, ..q(&["cam1"], 3) }).unwrap();
    assert!(ids(&m, &with_subs).contains(&"cam2".to_string()));
    let probs: Vec<f32> = r.items.iter().map(|i| i.probability).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().all(|p| (0.0..=1.0).contains(p)));
}

#[test]
fn ease_pair_weights_count_only_when_the_whole_pair_is_in_the_basket() {
    let mut parts = tiny_model().parts().clone();
    parts.ease = Csr::from_rows([vec![(3, 0.5)], vec![(3, 0.25)], vec![], vec![]]);
    parts.ease_pairs = PairWeights { pairs: vec![(0, 1)], weights: Csr::from_rows([vec![(2, 0.125), (3, 1.0)]]) };
    let m = CrossSellModel::new(parts.clone()).unwrap();
    let ease = |basket: &[ItemIx]| m.features(None, basket).column(model::feature::EASE).to_vec();
    assert_eq!(ease(&[0]), [0.0, 0.0, 0.0, 0.5]);
    assert_eq!(ease(&[1, 2]), [0.0, 0.0, 0.0, 0.25]);
    assert_eq!(ease(&[1, 0]), [0.0, 0.0, 0.125, 1.75], "both items of the pair: its weights join theirs");
    for bad in [vec![(1, 0)], vec![(0, 4)], vec![(2, 2)]] {
        let mut p = parts.clone();
        p.ease_pairs.pairs = bad;
        assert!(matches!(CrossSellModel::new(p), Err(Error::Inconsistent(_))));
    }
    let mut p = parts;
    p.ease_pairs.pairs.push((2, 3));
    assert!(matches!(CrossSellModel::new(p), Err(Error::Inconsistent(_))), "a pair without its weight row");
}

#[test]
fn ranking_applies_filters_thresholds_and_cold_start() {
    let m = tiny_model();
    let r = m.rank(&RankQuery { allow: vec!["cable".into()], ..q(&["cam1"], 3) }).unwrap();
    assert_eq!(ids(&m, &r), ["cable"]);
    let r = m.rank(&RankQuery { min_probability: 0.99, ..q(&["cam1"], 3) }).unwrap();
    assert!(r.items.is_empty(), "nothing is good enough: no offer");
    let r = m.rank(&RankQuery { customer_id: Some("stranger".into()), ..q(&["unknown-item"], 2) }).unwrap();
    assert!(!r.customer_known);
    assert_eq!(r.unknown_items, ["unknown-item"]);
    assert_eq!(r.items.len(), 2, "cold start still gets offers");
    let r = m.rank(&RankQuery { touchpoint: Touchpoint::Checkout, ..q(&["card"], 10) }).unwrap();
    assert!(r.items.len() <= 3 && ids(&m, &r).iter().all(|i| i == "cable"), "checkout offers are cheap: {:?}", ids(&m, &r));
    let r = m.rank(&RankQuery { customer_id: Some("returner".into()), ..q(&["cam1"], 3) }).unwrap();
    assert!(r.items.is_empty() && r.suppressed == Some(crate::Suppression::ReturnRisk), "habitual returners get no push");
    let r = m.rank(&RankQuery { customer_id: Some("loyal".into()), ..q(&["card"], 3) }).unwrap();
    assert!(r.customer_known);
}

#[test]
fn policies_are_configuration_and_say_what_they_withheld() {
    use crate::{Objective, Policies, RankPolicy, Withheld};
    let m = tiny_model();
    // the same model, a new rule: no retraining
    let mut policies = Policies { cart: RankPolicy { max_offers: 1, ..RankPolicy::default() }, ..Policies::default() };
    let cart = RankQuery { touchpoint: Touchpoint::Cart, ..q(&["cam1"], 3) };
    let r = m.rank_with(&cart, &policies).unwrap();
    assert_eq!(r.items.len(), 1);
    assert!(r.withheld.contains(&Withheld::OfferBudget(2)), "{:?}", r.withheld);
    let r = m.rank(&q(&["cam1"], 3)).unwrap();
    assert_eq!(r.withheld, [Withheld::Substitutes(1)], "the other camera");
    // the policy's minimum probability counts when higher than the request's
    policies.cart.min_probability = 0.999;
    let r = m.rank_with(&cart, &policies).unwrap();
    assert!(r.items.is_empty() && r.suppressed == Some(Suppression::BelowMinProbability));
    // expected value puts the pricier of two offers first when their probabilities are close
    let plain = m.rank(&RankQuery { allow: vec!["card".into(), "cable".into()], ..q(&["cam2"], 2) }).unwrap();
    let ev = m
        .rank(&RankQuery { allow: vec!["card".into(), "cable".into()], objective: Some(Objective::ExpectedValue), ..q(&["cam2"], 2) })
        .unwrap();
    let value = |r: &Ranking, k: usize| r.items[k].probability * m.parts().items.prices[r.items[k].item as usize];
    assert!(value(&ev, 0) >= value(&ev, 1), "ordered by probability × price");
    assert_eq!(plain.items.len(), 2);
    // a customer who returns a quarter of their lines gets fewer offers where the policy says so
    let mut parts = m.parts().clone();
    parts.customers.return_rate[1] = 0.3;
    let m = CrossSellModel::new(parts).unwrap();
    let returner = RankQuery { customer_id: Some("returner".into()), touchpoint: Touchpoint::ProductPage, ..q(&["cam1"], 3) };
    let r = m.rank(&returner).unwrap();
    assert_eq!(r.items.len(), 1);
    assert!(r.withheld.contains(&Withheld::ReturnLimit(2)), "{:?}", r.withheld);
    assert_eq!(
        m.rank(&RankQuery { touchpoint: Touchpoint::Unspecified, ..returner }).unwrap().items.len(),
        2,
        "the plain model does not limit"
    );
    // refused values name their key
    policies.checkout.item_return_weight = 2.0;
    let e = policies.validate().unwrap_err().to_string();
    assert!(e.contains("policies.checkout.item_return_weight"), "{e}");
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let m = tiny_model();
    let err = |q: RankQuery| m.rank(&q).unwrap_err().to_string();
    assert!(err(q(&["cam1"], 0)).contains("k"));
    assert!(err(q(&["cam1"], 5000)).contains("between 1 and 1000"));
    assert!(err(q(&[""], 3)).contains("empty"));
    let big: Vec<String> = (0..2500).map(|k| k.to_string()).collect();
    assert!(err(RankQuery { basket: big, k: 3, ..Default::default() }).contains("at most 2000"));
}

#[test]
fn inconsistent_parts_are_refused() {
    let mut parts = tiny_model().parts().clone();
    parts.pairs.indices[0] = 99;
    assert!(matches!(CrossSellModel::new(parts), Err(Error::Inconsistent(_))));
}

#[test]
fn aggregates_count_the_gram_of_items_and_their_most_co_bought_pairs() {
    // 5 items over 8 orders; the pair counts must equal the Gram of [X | 1 | pair columns]
    let baskets: [&[&str]; 8] =
        [&["a", "b", "c"], &["a", "b"], &["a", "b", "d"], &["c", "d"], &["c", "d", "a"], &["a", "c"], &["e"], &["a", "b", "c", "d"]];
    let mut b = LogBuilder::new();
    for (o, items) in baskets.iter().enumerate() {
        for it in *items {
            b.push(line(&o.to_string(), None, it, 1, Some(o as i64), false));
        }
    }
    let log = b.finish().unwrap();
    let all: Vec<usize> = (0..log.orders.len()).collect();
    let cfg = aggregate::AggregateConfig { gram_items: 4, gram_pairs: 3, ..Default::default() };
    let agg = Aggregates::compute(&log, &all, None, &cfg);
    let names: Vec<&str> = agg.gram_items.iter().map(|&i| log.catalog.ids[i as usize].as_str()).collect();
    assert_eq!(names, ["a", "c", "b", "d"], "most bought first, ties by index");
    // co-bought: a-b 4, a-c 4, c-d 3, a-d 3, b-c 2, b-d 2: the top 3 (ties by position)
    assert_eq!(agg.gram_pairs, [(0, 1), (0, 2), (0, 3)]);
    let x = ndarray::Array2::from_shape_fn((baskets.len(), 4), |(o, a)| f32::from(u8::from(baskets[o].contains(&names[a]))));
    let z = ndarray::Array2::from_shape_fn((baskets.len(), 3), |(o, q)| {
        let (a, c) = agg.gram_pairs[q];
        x[[o, a as usize]] * x[[o, c as usize]]
    });
    let ones = ndarray::Array2::<f32>::ones((baskets.len(), 1));
    let y = ndarray::concatenate![ndarray::Axis(1), x, ones, z];
    assert_eq!(agg.extended_gram(), y.t().dot(&y));
    // pairs bought together once are never selected
    let few = Aggregates::compute(&log, &all[..1], None, &cfg);
    assert!(few.gram_pairs.is_empty() && few.pair_gram.nrows() == 0);
}

#[test]
fn aggregates_count_orders_pairs_and_returns() {
    let mut b = LogBuilder::new();
    for (o, c, items, ts) in [("1", "x", vec!["a", "b"], 1), ("2", "x", vec!["a", "b", "c"], 2), ("3", "y", vec!["c"], 3)] {
        for it in items {
            b.push(line(o, Some(c), it, 1, Some(ts), false));
        }
    }
    b.push(line("C9", Some("y"), "c", -1, Some(2), true));
    b.push(line("C10", Some("y"), "c", -1, Some(9), true)); // after the cutoff
    let log = b.finish().unwrap();
    let all: Vec<usize> = (0..log.orders.len()).collect();
    let cfg = aggregate::AggregateConfig { gram_items: 2, recent_fraction: 0.34, ..Default::default() };
    let agg = Aggregates::compute(&log, &all, Some(5), &cfg);
    assert_eq!(agg.item_orders, vec![2.0, 2.0, 2.0]);
    // the Gram of the two most-bought items (ties by index: a, b) holds untruncated counts
    assert_eq!(agg.gram_items, vec![0, 1]);
    assert_eq!(agg.gram, ndarray::arr2(&[[2.0, 2.0], [2.0, 2.0]]));
    // the recent period is the newest ceil(0.34 × 3) = 2 orders
    assert_eq!((agg.n_recent, agg.item_recent_orders.clone()), (2, vec![1.0, 1.0, 2.0]));
    // x's latest order holds a and b: no order since; y's only order holds c
    assert_eq!((agg.since.get(0, 0), agg.since.get(0, 2), agg.since.get(1, 2)), (0.0, 0.0, 0.0));
    let older = Aggregates::compute(&log, &all[..1], None, &cfg);
    assert_eq!(older.since.get(0, 1), 0.0);
    assert_eq!(agg.pairs.get(0, 1), 2.0);
    assert_eq!(agg.pairs.get(0, 2), 1.0);
    assert_eq!(agg.item_returns[2], 1.0, "returns after the cutoff are not seen");
    assert!((agg.customer_return_rate(1) - 1.0).abs() < 1e-6);
    assert_eq!(agg.history.get(0, 0), 2.0);
}

#[test]
fn substitutes_are_judged_by_the_category_when_a_pair_is_too_rare() {
    // cam2 sells too rarely to judge the pair (cam1, cam2) alone: 400 × 2 / 1000 < 1 expected
    let mut parts = tiny_model().parts().clone();
    parts.items.orders = vec![400.0, 300.0, 2.0, 600.0];
    parts.n_orders = 1000.0;
    parts.pairs = Csr::from_rows([vec![(1, 250.0), (3, 30.0)], vec![(0, 250.0)], vec![], vec![(0, 30.0)]]);
    let m = CrossSellModel::new(parts.clone()).unwrap();
    assert!(!m.is_substitute(0, 2), "two cameras alone say too little about cameras");
    // with a third, well-selling camera bought with cam1 far less than chance (30 against 240),
    // cameras are a category of substitutes, and the rare one is judged by it
    parts.items.categories[3] = Some("cameras".into());
    let m = CrossSellModel::new(parts).unwrap();
    assert!(m.is_substitute(0, 2), "a rare camera is a substitute when cameras are seldom bought together");
    assert!(m.is_substitute(0, 3));
    assert!(!m.is_substitute(0, 1), "other categories are never substitutes");
}

#[test]
fn names_score_look_alike_designs() {
    let names: Vec<Option<String>> =
        ["LUNCH BAG RED RETROSPOT", "JUMBO BAG RED RETROSPOT", "WHITE METAL LANTERN", "CREAM CUPID HEARTS COAT HANGER", "12 PENCILS"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .collect();
    let idx = names::NameIndex::new(&names);
    let mut profile = names::NameProfile::default();
    idx.profile(&[0], &mut profile);
    let (basket, best) = idx.similarities(&profile, &(0..names.len() as ItemIx).collect::<Vec<_>>());
    assert!(best[1] > 0.5 && best[1] < 1.0, "shared design words: {}", best[1]);
    assert_eq!((best[2], best[4], best[5]), (0.0, 0.0, 0.0), "no shared word, digits and no name give nothing");
    assert!((basket[1] - best[1]).abs() < 1e-6, "one basket item: the centroid is that item");
    assert!((best[0] - 1.0).abs() < 1e-6);
}

#[test]
fn orders_over_the_item_cap_count_toward_popularity_but_not_pairs() {
    let big: Vec<String> = (0..30).map(|k| format!("i{k}")).collect();
    let mut b = LogBuilder::new();
    for it in &big {
        b.push(line("huge", None, it, 1, Some(1), false));
    }
    for it in ["i0", "i1"] {
        b.push(line("small", None, it, 1, Some(2), false));
    }
    let log = b.finish().unwrap();
    let all: Vec<usize> = (0..log.orders.len()).collect();
    let cfg = aggregate::AggregateConfig { gram_items: 30, max_order_items: 10, ..Default::default() };
    let agg = Aggregates::compute(&log, &all, None, &cfg);
    let ix = |s: &str| log.catalog.ids.iter().position(|x| x == s).unwrap();
    assert_eq!(agg.item_orders[ix("i5")], 1.0, "the huge order still counts toward popularity");
    assert_eq!(agg.pairs.row(ix("i5")).0.len(), 0, "but not toward pairs");
    assert_eq!(agg.pairs.get(ix("i0"), ix("i1") as ItemIx), 1.0, "only the small order's pair is counted");
    let uncapped = Aggregates::compute(&log, &all, None, &aggregate::AggregateConfig { gram_items: 30, ..Default::default() });
    assert_eq!(uncapped.pairs.get(ix("i0"), ix("i1") as ItemIx), 2.0);
}

#[test]
fn discovery_requests_of_a_known_customer_use_the_discovery_ranker() {
    let mut parts = tiny_model().parts().clone();
    parts.discovery_ranker = Some(Ranker::single(model::feature::POPULARITY));
    let m = CrossSellModel::new(parts).unwrap();
    let loyal = |new_to_customer| RankQuery { customer_id: Some("loyal".into()), new_to_customer, ..q(&["cam1"], 3) };
    let x = m.features(m.customer("loyal"), &[0]);
    let general = m.rank(&loyal(false)).unwrap();
    let discovery = m.rank(&loyal(true)).unwrap();
    assert!(!discovery.items.is_empty());
    for i in &discovery.items {
        assert_eq!(i.score, x[[i.item as usize, model::feature::POPULARITY]], "scored by the discovery ranker");
        assert_ne!(m.parts().items.ids[i.item as usize], "cable", "the customer's past item is left out");
    }
    assert!(general.items.iter().any(|i| i.score != x[[i.item as usize, model::feature::POPULARITY]]), "the general ranker otherwise");
    // an anonymous discovery request has no past to leave out: the general ranker serves it
    let anonymous = m.rank(&RankQuery { new_to_customer: true, ..q(&["cam1"], 3) }).unwrap();
    assert_eq!(anonymous, m.rank(&q(&["cam1"], 3)).unwrap());
}

#[test]
fn drivers_name_the_basket_items_and_history_that_raised_an_offer() {
    use crate::model::DriverSource;
    let m = tiny_model();
    let ix = |id: &str| m.item(id).unwrap();
    let base = RankQuery { customer_id: Some("loyal".into()), ..q(&["cam1", "cam2"], 3) };
    let plain = m.rank(&base).unwrap();
    assert!(plain.items.iter().all(|o| o.drivers.is_empty()), "drivers only when asked for");
    let r = m.rank(&RankQuery { explain: true, ..base }).unwrap();
    let offers: Vec<(String, Vec<crate::model::Driver>)> =
        r.items.iter().map(|o| (m.parts().items.ids[o.item as usize].clone(), o.drivers.clone())).collect();
    let card = &offers.iter().find(|(id, _)| id == "card").expect("the card is offered").1;
    assert_eq!(card[0].source, DriverSource::BasketItem(ix("cam1")), "the card is bought with camera 1: {card:?}");
    let cable = &offers.iter().find(|(id, _)| id == "cable").expect("the cable is offered").1;
    assert!(cable.iter().any(|d| d.source == DriverSource::History), "the customer bought cables before: {cable:?}");
    for (_, d) in &offers {
        assert!(d.len() <= crate::explain::MAX_DRIVERS);
        assert!(d.iter().all(|d| d.share > 0.0 && d.share <= 1.0));
        assert!(d.iter().map(|d| d.share).sum::<f32>() <= 1.0 + 1e-5);
        assert!(d.windows(2).all(|w| w[0].share >= w[1].share));
    }
    // the same offers and scores, explained or not
    assert_eq!(
        plain.items.iter().map(|o| (o.item, o.score)).collect::<Vec<_>>(),
        r.items.iter().map(|o| (o.item, o.score)).collect::<Vec<_>>()
    );
}

#[test]
fn a_pricier_item_of_the_basket_items_kind_is_an_upsell_unless_bought_with_it() {
    // the cable becomes a rare, pricier card: never bought with the card, too rare for the
    // co-purchase evidence alone (expected 0.6 pairs), so only the upsell rule withholds it
    let mut parts = tiny_model().parts().clone();
    parts.items.categories[3] = Some("cards".into());
    parts.items.prices[3] = 50.0;
    parts.items.orders[3] = 2.0;
    let m = CrossSellModel::new(parts.clone()).unwrap();
    let (card, cable) = (m.item("card").unwrap(), m.item("cable").unwrap());
    assert!(m.is_substitute(card, cable), "a card at 2.5× the price, never bought with it");
    assert!(!m.is_substitute(cable, card), "the cheaper one is no upsell of the pricier");
    let got = ids(&m, &m.rank(&q(&["card"], 3)).unwrap());
    assert!(!got.contains(&"cable".to_string()), "{got:?}");
    let allowed = ids(&m, &m.rank(&RankQuery { allow_substitutes: true, ..q(&["card"], 3) }).unwrap());
    assert!(allowed.contains(&"cable".to_string()), "{allowed:?}");
    // at about the same price it is judged on the co-purchase evidence only
    parts.items.prices[3] = 22.0;
    let m = CrossSellModel::new(parts).unwrap();
    assert!(!m.is_substitute(card, cable));
}

#[test]
fn history_cut_keeps_the_most_bought_past_items() {
    use crate::features::HistoryCut;
    use crate::model::HISTORY_EASE_ITEMS;
    // rows shorter than, equal to and longer than the cut, with many ties at the cut's count
    let rows: Vec<Vec<(u32, f32)>> = [3usize, HISTORY_EASE_ITEMS, HISTORY_EASE_ITEMS + 1, 120, 400]
        .iter()
        .enumerate()
        .map(|(r, &len)| (0..len as u32).map(|i| (i * 3 + r as u32, ((i * 7 + r as u32) % 5 + 1) as f32)).collect())
        .collect();
    let history = Csr::from_rows(rows);
    let cuts = HistoryCut::of_rows(&history);
    for (c, cut) in cuts.iter().enumerate() {
        let (cols, vals) = history.row(c);
        let mut kept = Vec::new();
        cut.for_each(cols, vals, |i, h| kept.push((i, h)));
        // what sorting the whole row would keep: the most bought, ties by the lower item
        let mut want: Vec<(u32, f32)> = cols.iter().copied().zip(vals.iter().copied()).collect();
        retrieval::truncate_best(&mut want, HISTORY_EASE_ITEMS);
        want.sort_unstable_by_key(|&(i, _)| i);
        assert_eq!(kept, want, "row {c}");
    }
}

#[test]
fn truncate_best_keeps_the_highest_values_ties_by_lower_item() {
    let values = [3.0, -1.0, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 2.5, -7.25, 1e-30, -1e-30, 3.0, 2.5, f32::NAN, -f32::NAN];
    let v: Vec<(u32, f32)> = (0..60u32).map(|j| ((j * 37) % 61, values[(j as usize * 5) % values.len()])).collect();
    for k in [0, 1, 5, 12, 59, 60, 100] {
        let mut got = v.clone();
        retrieval::truncate_best(&mut got, k);
        let mut want = v.clone();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(k);
        let bits = |l: &[(u32, f32)]| l.iter().map(|&(j, x)| (j, x.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "k = {k}");
    }
}

#[test]
fn a_sorted_walk_sees_the_full_sort_order_and_stops_when_told() {
    let keys: Vec<u32> = (0..257u32).map(|i| (i * 97 + 13) % 257).collect();
    let cmp = |a: &usize, b: &usize| keys[*b].cmp(&keys[*a]).then(a.cmp(b));
    let mut want: Vec<usize> = (0..keys.len()).collect();
    want.sort_by(cmp);
    for chunk in [0, 1, 7, 32, 256, 257, 1000] {
        for stop in [0, 1, 31, 33, 200, 257] {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            let mut seen = Vec::new();
            crate::policy::walk_sorted(&mut order, chunk, cmp, |row| {
                if seen.len() == stop {
                    return false;
                }
                seen.push(row);
                true
            });
            assert_eq!(seen, want[..stop], "chunk {chunk}, stop {stop}");
        }
    }
}

#[test]
fn strongest_first_keeps_each_row_and_orders_it_by_strength() {
    let m = Csr::from_rows([vec![(0, 0.5), (2, -2.0), (3, 1.0), (5, -0.5), (7, 2.0)], vec![], vec![(1, -0.25)]]);
    let s = crate::model::strongest_first(&m);
    assert_eq!(s.indptr, m.indptr);
    assert_eq!(s.row(0), (&[2, 7, 3, 0, 5][..], &[-2.0, 2.0, 1.0, 0.5, -0.5][..]), "by |weight|, ties by column");
    assert_eq!(s.row(2), m.row(2));
}

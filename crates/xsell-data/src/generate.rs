//! A deterministic synthetic order log with known structure, for the sample data and tests.
//!
//! The catalog has product *families* (cameras, consoles, printers …). Each family has one
//! primary category and accessory categories. Every primary item has one specific compatible
//! item in each accessory category (camera 3 → memory card 3, case 3): its **complements**.
//! Items of one primary category are **substitutes**: a basket rarely holds two cameras.
//! Customers favour a few families, re-buy their own consumables, and some of them return most
//! of what they buy. [`GroundTruth`] records all of it so tests can check what a model recovers.

use std::collections::HashMap;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::RawLine;

/// Settings of the generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateConfig {
    /// Random seed.
    pub seed: u64,
    /// Registered customers.
    pub customers: usize,
    /// Purchase orders.
    pub orders: usize,
    /// Items per category.
    pub items_per_category: usize,
    /// Share of orders placed by guests (no customer id).
    pub guest_share: f64,
    /// Share of customers who return most of what they buy.
    pub returner_share: f64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig { seed: 7, customers: 500, orders: 10_000, items_per_category: 8, guest_share: 0.1, returner_share: 0.08 }
    }
}

/// Family name, primary category, accessory categories (the last one is a consumable).
const FAMILIES: [(&str, &str, [&str; 3]); 6] = [
    ("camera", "cameras", ["memory cards", "camera cases", "camera batteries"]),
    ("console", "consoles", ["games", "controllers", "headsets"]),
    ("printer", "printers", ["printer cables", "paper", "ink"]),
    ("coffee", "coffee makers", ["grinders", "filters", "coffee beans"]),
    ("laptop", "laptops", ["laptop bags", "mice", "usb hubs"]),
    ("phone", "phones", ["phone cases", "chargers", "screen protectors"]),
];

/// Categories of the catalog (families × their primary and three accessory categories).
pub const CATEGORIES: usize = FAMILIES.len() * 4;

/// What the generator put into the log.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    /// Primary item id → its specific compatible accessories (the consumable one is what guests
    /// buy; registered customers buy their own brand of it).
    pub complements: HashMap<String, Vec<String>>,
    /// Category of every item id.
    pub category: HashMap<String, String>,
    /// Customers generated as habitual returners.
    pub returners: Vec<String>,
}

struct Item {
    id: String,
    name: String,
    category: String,
    price: f64,
}

/// Generates the log lines (time-ordered) and the ground truth.
pub fn generate(cfg: &GenerateConfig) -> (Vec<RawLine>, GroundTruth) {
    let mut lines = Vec::new();
    let truth = generate_batches(cfg, usize::MAX, &mut |batch| {
        lines.extend_from_slice(batch);
        Ok::<(), std::convert::Infallible>(())
    });
    (lines, truth.unwrap_or_else(|e| match e {}))
}

/// Like [`generate`], handing the lines to `emit` in time order, in batches of about
/// `batch_lines` (memory: a batch and the returns not yet due, whatever the log's size).
pub fn generate_batches<E>(
    cfg: &GenerateConfig,
    batch_lines: usize,
    emit: &mut dyn FnMut(&[RawLine]) -> std::result::Result<(), E>,
) -> std::result::Result<GroundTruth, E> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let per = cfg.items_per_category.max(1);
    let mut items: Vec<Item> = Vec::new();
    // cats[f][0] = primary category item indices, cats[f][1..] = accessory categories
    let mut cats: Vec<Vec<Vec<usize>>> = Vec::new();
    for (f, (family, primary, accessories)) in FAMILIES.iter().enumerate() {
        let mut fam = Vec::new();
        for (c, cat) in std::iter::once(primary).chain(accessories.iter()).enumerate() {
            let base = if c == 0 { 150.0 + 60.0 * f as f64 } else { 8.0 + 4.0 * c as f64 };
            let ids = (0..per)
                .map(|k| {
                    items.push(Item {
                        id: format!("{}-{}-{:02}", &family[..3].to_uppercase(), c, k),
                        name: format!("{} {} model {}", family, cat, k),
                        category: cat.to_string(),
                        price: (base * (1.0 + 0.15 * k as f64) * 100.0).round() / 100.0,
                    });
                    items.len() - 1
                })
                .collect();
            fam.push(ids);
        }
        cats.push(fam);
    }
    // complement[p] = the compatible accessory per accessory category (a fixed permutation)
    let mut truth = GroundTruth::default();
    let mut complement: HashMap<usize, Vec<usize>> = HashMap::new();
    for fam in &cats {
        for (k, &p) in fam[0].iter().enumerate() {
            let comp: Vec<usize> = fam[1..].iter().enumerate().map(|(a, acc)| acc[(k * (a + 2) + a) % acc.len()]).collect();
            truth.complements.insert(items[p].id.clone(), comp.iter().map(|&i| items[i].id.clone()).collect());
            complement.insert(p, comp);
        }
    }
    for it in &items {
        truth.category.insert(it.id.clone(), it.category.clone());
    }
    // popularity within a category: Zipf-like weights, drawn by bisecting their running sums
    let cumulative: Vec<f64> = (0..per)
        .scan(0.0, |sum, k| {
            *sum += 1.0 / (k as f64 + 1.0);
            Some(*sum)
        })
        .collect();
    let pick = |rng: &mut ChaCha8Rng, cat: &[usize]| -> usize {
        let x = rng.random::<f64>() * cumulative[per - 1];
        cat[cumulative.partition_point(|&c| c < x).min(cat.len() - 1)]
    };
    struct Customer {
        id: String,
        families: Vec<usize>,
        owned: Vec<usize>,
        /// favourite item ("brand") of each family's consumable category
        brand: Vec<usize>,
        returner: bool,
    }
    let mut customers: Vec<Customer> = (0..cfg.customers)
        .map(|c| {
            let mut fams: Vec<usize> = (0..FAMILIES.len()).collect();
            let k = rng.random_range(1..=3);
            let mut chosen = Vec::new();
            for _ in 0..k {
                let i = rng.random_range(0..fams.len());
                chosen.push(fams.swap_remove(i));
            }
            let returner = rng.random_bool(cfg.returner_share);
            let id = format!("C{:05}", c + 1);
            if returner {
                truth.returners.push(id.clone());
            }
            let brand = cats.iter().map(|fam| fam[3][rng.random_range(0..fam[3].len())]).collect();
            Customer { id, families: chosen, owned: Vec::new(), brand, returner }
        })
        .collect();
    let mut lines: Vec<RawLine> = Vec::new();
    let start_ms: i64 = 1_704_067_200_000; // 2024-01-01
    let step_ms: i64 = 365 * 24 * 3_600_000 / cfg.orders.max(1) as i64;
    // returns come 5 days after their order, so they are due in the order they were made
    let mut returns: std::collections::VecDeque<RawLine> = std::collections::VecDeque::new();
    for o in 0..cfg.orders {
        let ts = start_ms + o as i64 * step_ms + rng.random_range(0..step_ms.max(1));
        let order_id = format!("{}", 100_000 + o);
        // time order, ties by order id, a purchase before a return of the same key
        while returns.front().is_some_and(|r| (r.ts, r.order_id.as_str()) < (Some(ts), order_id.as_str())) {
            lines.extend(returns.pop_front());
        }
        if lines.len() >= batch_lines {
            emit(&lines)?;
            lines.clear();
        }
        let guest = customers.is_empty() || rng.random_bool(cfg.guest_share);
        let cix = if guest { None } else { Some(rng.random_range(0..customers.len())) };
        let family = match cix {
            Some(c) if rng.random_bool(0.85) => *customers[c].families.choose(&mut rng).expect("one family at least"),
            _ => rng.random_range(0..FAMILIES.len()),
        };
        let fam = &cats[family];
        let mut basket: Vec<usize> = Vec::new();
        let owned_primary = cix.and_then(|c| customers[c].owned.iter().copied().find(|p| fam[0].contains(p)));
        match owned_primary {
            // a customer who owns the primary re-buys their own brand of consumable, with an
            // accessory of the primary, and often another family's consumable too
            Some(p) if rng.random_bool(0.6) => {
                let c = &customers[cix.expect("owner is a customer")];
                basket.push(c.brand[family]);
                if rng.random_bool(0.6) {
                    basket.push(complement[&p][rng.random_range(0..2)]);
                }
                let other = *c.families.choose(&mut rng).expect("one family at least");
                if other != family && rng.random_bool(0.5) {
                    basket.push(c.brand[other]);
                }
            }
            _ => {
                let p = pick(&mut rng, &fam[0]);
                basket.push(p);
                let comp = &complement[&p];
                for (a, &acc) in comp.iter().enumerate() {
                    if rng.random_bool([0.7, 0.5, 0.4][a]) {
                        // registered customers take their own brand of the consumable
                        basket.push(match cix {
                            Some(c) if a == 2 => customers[c].brand[family],
                            _ => acc,
                        });
                    }
                }
                if rng.random_bool(0.03) {
                    basket.push(pick(&mut rng, &fam[0])); // rare comparison purchase
                }
                if let Some(c) = cix {
                    customers[c].owned.push(p);
                }
            }
        }
        if rng.random_bool(0.35) {
            let other = &cats[rng.random_range(0..cats.len())];
            let acc = rng.random_range(1..other.len());
            basket.push(pick(&mut rng, &other[acc]));
        }
        basket.dedup();
        let customer_id = cix.map(|c| customers[c].id.clone());
        for &i in &basket {
            let it = &items[i];
            let qty = if rng.random_bool(0.2) { 2 } else { 1 };
            let line = RawLine {
                order_id: order_id.clone(),
                customer_id: customer_id.clone(),
                item_id: it.id.clone(),
                item_name: Some(it.name.clone()),
                category: Some(it.category.clone()),
                quantity: qty,
                unit_price: Some(it.price),
                ts: Some(ts),
                is_return: false,
            };
            if cix.is_some_and(|c| customers[c].returner) && rng.random_bool(0.7) {
                returns.push_back(RawLine {
                    order_id: format!("C{order_id}"),
                    quantity: -qty,
                    ts: Some(ts + 5 * 86_400_000),
                    is_return: true,
                    ..line.clone()
                });
            }
            lines.push(line);
        }
    }
    lines.extend(returns);
    emit(&lines)?;
    Ok(truth)
}

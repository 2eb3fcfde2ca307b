//! `xsell eval --exposures LOG --orders LOG`: attributes later orders to the offers the server
//! showed (its exposure log) and reports the online cross-sell measures of
//! `../shared/DOMAIN.md`.
//!
//! An exposure of a known customer is attributed to that customer's first order at or after
//! it, within the attribution window; the offer is accepted when that order holds an offered
//! item. Order values are at the catalog's mean unit prices.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use anyhow::Context;
use serde::Serialize;
use xsell_core::OrderLog;
use xsell_server::exposure::Exposure;

/// Reads exposure records from JSON-lines files (a file, a directory of `*.jsonl`, or a glob).
pub fn read_exposures(spec: &str) -> anyhow::Result<Vec<Exposure>> {
    let path = std::path::Path::new(spec);
    let pattern = if path.is_dir() { format!("{}/*.jsonl", spec.trim_end_matches('/')) } else { spec.to_owned() };
    let mut files: Vec<_> =
        glob::glob(&pattern).with_context(|| format!("--exposures {spec}: not a path or glob"))?.collect::<Result<_, _>>()?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "--exposures {spec}: no exposure log file");
    let mut out = Vec::new();
    for f in files {
        let r = std::io::BufReader::new(std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?);
        for (n, line) in r.lines().enumerate() {
            let line = line.with_context(|| format!("{}: line {}", f.display(), n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(serde_json::from_str(&line).with_context(|| format!("{}: line {}: not an exposure record", f.display(), n + 1))?);
        }
    }
    Ok(out)
}

/// The online measures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Attribution {
    /// Exposure records read.
    pub exposures: usize,
    /// Of them, with a known customer and at least one offer.
    pub judged: usize,
    /// Of those, followed by an order of the customer within the window.
    pub followed: usize,
    /// Share of followed exposures whose order holds an offered item.
    pub attachment_rate: f64,
    /// Share of exposed customers who bought an offered item after an exposure.
    pub conversion_rate: f64,
    /// Offered items bought per followed order (the cross-sell ratio).
    pub cross_sell_ratio: f64,
    /// Value of the accepted offers over the value of the followed orders.
    pub cross_sell_revenue_share: f64,
    /// Mean value of followed orders with an accepted offer ...
    pub aov_with_offer: f64,
    /// ... and without.
    pub aov_without_offer: f64,
    /// Share of the cross-sold items the customer returned afterwards.
    pub cross_sold_return_rate: f64,
}

/// Attributes `log`'s orders to `exposures` within `window_ms`.
pub fn attribute(log: &OrderLog, exposures: &[Exposure], window_ms: i64) -> Attribution {
    let cust: HashMap<&str, u32> = log.customers.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
    let item: HashMap<&str, u32> = log.catalog.ids.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
    // per customer: (time, order) sorted by time
    let mut orders: HashMap<u32, Vec<(i64, usize)>> = HashMap::new();
    for (o, order) in log.orders.iter().enumerate() {
        if let (Some(c), Some(ts)) = (order.customer, order.ts) {
            orders.entry(c).or_default().push((ts, o));
        }
    }
    for v in orders.values_mut() {
        v.sort_unstable();
    }
    let mut returns: HashMap<(u32, u32), Vec<i64>> = HashMap::new();
    for r in &log.returns {
        if let (Some(c), Some(ts)) = (r.customer, r.ts) {
            returns.entry((c, r.item)).or_default().push(ts);
        }
    }
    let price = |i: u32| {
        let p = log.catalog.prices[i as usize];
        if p.is_finite() && p > 0.0 { f64::from(p) } else { 0.0 }
    };
    let mut a = Attribution { exposures: exposures.len(), ..Default::default() };
    let (mut attached, mut accepted_items, mut accepted_value, mut order_value) = (0usize, 0usize, 0.0, 0.0);
    let (mut with, mut without) = ((0.0, 0usize), (0.0, 0usize));
    let (mut exposed, mut converted) = (HashSet::new(), HashSet::new());
    let (mut cross_sold, mut returned) = (0usize, 0usize);
    for e in exposures {
        let Some(&c) = e.customer_id.as_deref().and_then(|c| cust.get(c)) else { continue };
        if e.offers.is_empty() {
            continue;
        }
        a.judged += 1;
        exposed.insert(c);
        let Some(list) = orders.get(&c) else { continue };
        let at = list.partition_point(|&(ts, _)| ts < e.ts_ms);
        let Some(&(ts, o)) = list.get(at).filter(|(ts, _)| *ts - e.ts_ms <= window_ms) else { continue };
        a.followed += 1;
        let order = &log.orders[o];
        let value: f64 = order.items.iter().map(|&i| price(i)).sum();
        order_value += value;
        let offered: HashSet<u32> = e.offers.iter().filter_map(|x| item.get(x.item_id.as_str()).copied()).collect();
        let bought: Vec<u32> = order.items.iter().copied().filter(|i| offered.contains(i)).collect();
        if bought.is_empty() {
            without.0 += value;
            without.1 += 1;
            continue;
        }
        attached += 1;
        converted.insert(c);
        with.0 += value;
        with.1 += 1;
        accepted_items += bought.len();
        for &i in &bought {
            accepted_value += price(i);
            cross_sold += 1;
            returned += usize::from(returns.get(&(c, i)).is_some_and(|r| r.iter().any(|&t| t >= ts)));
        }
    }
    let share = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
    a.attachment_rate = share(attached as f64, a.followed as f64);
    a.conversion_rate = share(converted.len() as f64, exposed.len() as f64);
    a.cross_sell_ratio = share(accepted_items as f64, a.followed as f64);
    a.cross_sell_revenue_share = share(accepted_value, order_value);
    a.aov_with_offer = share(with.0, with.1 as f64);
    a.aov_without_offer = share(without.0, without.1 as f64);
    a.cross_sold_return_rate = share(returned as f64, cross_sold as f64);
    a
}

impl Attribution {
    pub fn print(&self, window_days: f64) {
        outln!(
            "exposures: {} read, {} of known customers with offers, {} followed by an order within {window_days} days",
            self.exposures,
            self.judged,
            self.followed
        );
        outln!("attachment rate            {:.4}", self.attachment_rate);
        outln!("cross-sell conversion rate {:.4}", self.conversion_rate);
        outln!("cross-sell ratio           {:.4} offered items per order", self.cross_sell_ratio);
        outln!("cross-sell revenue share   {:.4}", self.cross_sell_revenue_share);
        outln!("average order value        {:.2} with an accepted offer, {:.2} without", self.aov_with_offer, self.aov_without_offer);
        outln!("return rate, cross-sold    {:.4}", self.cross_sold_return_rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xsell_core::{LogBuilder, LogLine};
    use xsell_server::exposure::Offer;

    fn line<'a>(order: &'a str, customer: &'a str, item: &'a str, ts: i64, price: f64, is_return: bool) -> LogLine<'a> {
        LogLine {
            order_id: Some(order),
            customer_id: Some(customer),
            item_id: Some(item),
            item_name: None,
            category: None,
            quantity: if is_return { -1 } else { 1 },
            unit_price: Some(price),
            ts: Some(ts),
            is_return,
        }
    }

    fn shown(customer: &str, ts_ms: i64, items: &[&str]) -> Exposure {
        Exposure {
            ts_ms,
            request_id: format!("{customer}-{ts_ms}"),
            model_version: "v".into(),
            customer_id: Some(customer.into()),
            touchpoint: "cart".into(),
            offers: items.iter().enumerate().map(|(r, i)| Offer { item_id: (*i).into(), rank: r as u32 + 1, probability: 0.1 }).collect(),
            suppressed: None,
        }
    }

    #[test]
    fn later_orders_are_attributed_to_the_offers_shown_before_them() {
        let mut b = LogBuilder::new();
        for l in [
            line("o1", "ann", "camera", 1_000, 300.0, false),
            line("o1", "ann", "card", 1_000, 20.0, false),
            line("r1", "ann", "card", 5_000, 20.0, true),
            line("o2", "bob", "camera", 2_000, 300.0, false),
            line("o3", "cat", "case", 90_000_000, 30.0, false),
        ] {
            b.push(l);
        }
        let log = b.finish().unwrap();
        let exposures = vec![
            shown("ann", 500, &["card", "case"]), // accepted: card, returned later
            shown("bob", 1_500, &["case"]),       // followed, not accepted
            shown("cat", 1_000, &["case"]),       // bought a day later: outside a 1-hour window
            shown("dan", 1_000, &["case"]),       // unknown customer
        ];
        let a = attribute(&log, &exposures, 3_600_000);
        assert_eq!((a.exposures, a.judged, a.followed), (4, 3, 2));
        assert_eq!(a.attachment_rate, 0.5);
        assert!((a.conversion_rate - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(a.cross_sell_ratio, 0.5);
        assert!((a.cross_sell_revenue_share - 20.0 / 620.0).abs() < 1e-9);
        assert_eq!((a.aov_with_offer, a.aov_without_offer), (320.0, 300.0));
        assert_eq!(a.cross_sold_return_rate, 1.0);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exposures-1.jsonl");
        std::fs::write(&f, "{\"ts_ms\": 1}\n").unwrap();
        let e = read_exposures(dir.path().to_str().unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("exposures-1.jsonl: line 1"), "{e:#}");
    }
}

//! `xsell batch`: offers for every customer (or a list) from their history and last order, for
//! e-mail and post-purchase campaigns, written to parquet in streaming batches under the same
//! touchpoint policies as the server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use clap::Args;
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;
use xsell_core::{CrossSellModel, Policies, RankQuery, Touchpoint};
use xsell_train::Progress;

use crate::progress::Bars;

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Root directory of model bundles.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Model name (its latest bundle is used).
    #[arg(long, default_value = "default")]
    name: String,
    /// Output parquet file (customer_id, rank, item_id, probability, score, reason, model_version,
    /// drivers).
    #[arg(long, default_value = "campaign.parquet")]
    out: PathBuf,
    /// Only these customers: a text file with one id a line (default: every customer of the model).
    #[arg(long)]
    customers: Option<PathBuf>,
    /// The touchpoint whose policy applies (email or post_purchase, …).
    #[arg(long, default_value = "email", value_parser = parse_touchpoint)]
    touchpoint: Touchpoint,
    /// Offers per customer at most (the policy's offer budget may be smaller).
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// The server's configuration file: its `[policies.*]` tables apply (default: the built-in policies).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Order log: skip customers whose typical reorder interval (median gap between their orders)
    /// has not passed since their last order, as of the log's newest order (or --as-of).
    #[arg(long)]
    orders: Option<String>,
    /// With --orders: the campaign's time, epoch milliseconds (default: the log's newest order).
    #[arg(long)]
    as_of: Option<i64>,
    /// Also write each offer's drivers (`drivers`: `item_id:share` or `history:share`, `;`-separated).
    #[arg(long)]
    explain: bool,
    /// A bundle of this many items per customer (1 to 5, the `Bundle` RPC's rule: complements of
    /// the last order and of each other, never two substitutes) instead of a ranked list.
    #[arg(long)]
    bundle: Option<usize>,
    /// With --bundle: the bundle discount (a share in [0, 1)) that enters the expected value.
    #[arg(long, default_value_t = 0.0)]
    discount: f32,
    /// Customers ranked per written batch.
    #[arg(long, default_value_t = 4096)]
    batch_customers: usize,
}

fn parse_touchpoint(s: &str) -> Result<Touchpoint, String> {
    Touchpoint::ALL.iter().copied().find(|t| t.key() == s).ok_or_else(|| {
        format!("unknown touchpoint {s:?}; one of {}", Touchpoint::ALL.iter().map(|t| t.key()).collect::<Vec<_>>().join(", "))
    })
}

/// Per customer id: whether their typical reorder interval has passed at `as_of` (customers with
/// fewer than two timed orders always pass).
fn due(log: &xsell_core::OrderLog, as_of: Option<i64>) -> (HashMap<String, bool>, i64) {
    let mut times: HashMap<u32, Vec<i64>> = HashMap::new();
    for o in &log.orders {
        if let (Some(c), Some(ts)) = (o.customer, o.ts) {
            times.entry(c).or_default().push(ts);
        }
    }
    let now = as_of.unwrap_or_else(|| log.orders.iter().filter_map(|o| o.ts).max().unwrap_or(0));
    let due = times
        .into_iter()
        .map(|(c, mut t)| {
            t.sort_unstable();
            t.dedup();
            let mut gaps: Vec<i64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let passed = if gaps.is_empty() {
                true
            } else {
                let mid = gaps.len() / 2;
                let typical = *gaps.select_nth_unstable(mid).1;
                now - t[t.len() - 1] >= typical
            };
            (log.customers[c as usize].clone(), passed)
        })
        .collect();
    (due, now)
}

pub fn run(a: BatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=xsell_core::model::limits::MAX_K).contains(&a.k), "--k must be within 1..=1000");
    anyhow::ensure!(a.batch_customers > 0, "--batch-customers must be at least 1");
    let bundle = xsell_model::load_latest(&a.models.join(&a.name))?;
    let policies = match &a.config {
        Some(f) => xsell_server::ServeConfig::load(Some(f), HashMap::<String, String>::new())?.policies,
        None => Policies::default(),
    };
    let model = &bundle.model;
    let p = model.parts();
    let customers: Vec<String> = match &a.customers {
        None => p.customers.ids.clone(),
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let (known, unknown): (Vec<String>, Vec<String>) = customers.into_iter().partition(|c| model.customer(c).is_some());
    if !unknown.is_empty() {
        tracing::warn!(count = unknown.len(), first = %unknown[0], "customers unknown to the model are skipped");
    }
    let mut not_due = 0usize;
    let todo: Vec<String> = match &a.orders {
        None => known,
        Some(spec) => {
            let (log, _) = crate::train::read_input(spec, &Default::default())?;
            let (due, now) = due(&log, a.as_of);
            tracing::info!(as_of = now, "timing: a customer is due once their median reorder interval has passed");
            known
                .into_iter()
                .filter(|c| {
                    let ok = due.get(c).copied().unwrap_or(true);
                    not_due += usize::from(!ok);
                    ok
                })
                .collect()
        }
    };
    let version = bundle.manifest.version.clone();
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("probability", DataType::Float32, false),
        Field::new("score", DataType::Float32, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("drivers", DataType::Utf8, false),
        Field::new("bundle_probability", DataType::Float32, true),
        Field::new("bundle_expected_value", DataType::Float32, true),
    ]));
    let file = std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), None)?;
    let mut bars = Bars::default();
    bars.start("campaign", todo.len() as u64);
    let (mut offers, mut suppressed) = (0usize, 0usize);
    for chunk in todo.chunks(a.batch_customers) {
        type Ranked = (String, xsell_core::Ranking, Option<(f32, f32)>);
        let ranked: Vec<Ranked> = chunk
            .par_iter()
            .map(|c| -> anyhow::Result<_> {
                let q = RankQuery { explain: a.explain, ..last_order_query(model, c, a.k, a.touchpoint) };
                Ok(match a.bundle {
                    None => (c.clone(), model.rank_with(&q, &policies)?, None),
                    Some(size) => {
                        let b = model.bundle_with(&q, size, a.discount, &policies)?;
                        (c.clone(), b.ranking, Some((b.probability, b.expected_value)))
                    }
                })
            })
            .collect::<anyhow::Result<_>>()?;
        type Row<'a> = (&'a str, u32, &'a xsell_core::RankedItem, Option<(f32, f32)>);
        let rows: Vec<Row<'_>> =
            ranked.iter().flat_map(|(c, r, b)| r.items.iter().enumerate().map(move |(k, o)| (c.as_str(), k as u32 + 1, o, *b))).collect();
        suppressed += ranked.iter().filter(|(_, r, _)| r.items.is_empty()).count();
        offers += rows.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| p.items.ids[r.2.item as usize].as_str()))),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.2.probability))),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.2.score))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| model.explain(r.2.reason).1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| version.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| drivers(model, &r.2.drivers)))),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.3.map(|b| b.0)))),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.3.map(|b| b.1)))),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        bars.advance(chunk.len() as u64);
    }
    bars.finish();
    w.close()?;
    outln!(
        "{} customers ranked ({} offers, {} with none under the {} policy); skipped: {} unknown to the model, {} not due yet",
        todo.len(),
        offers,
        suppressed,
        a.touchpoint.key(),
        unknown.len(),
        not_due
    );
    outln!("campaign: {}", a.out.display());
    Ok(())
}

/// An offer's drivers as text: `item_id:share` or `history:share`, `;`-separated.
fn drivers(model: &CrossSellModel, d: &[xsell_core::model::Driver]) -> String {
    d.iter()
        .map(|d| match d.source {
            xsell_core::model::DriverSource::BasketItem(i) => format!("{}:{:.3}", model.parts().items.ids[i as usize], d.share),
            xsell_core::model::DriverSource::History => format!("history:{:.3}", d.share),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The campaign request of a known customer: their last order as the basket (the items bought
/// in it: no order since), their history through the customer id.
fn last_order_query(model: &CrossSellModel, customer: &str, k: usize, touchpoint: Touchpoint) -> RankQuery {
    let p = model.parts();
    let basket = model
        .customer(customer)
        .map(|c| {
            let (items, since) = p.since.row(c as usize);
            items.iter().zip(since).filter(|(_, s)| **s == 0.0).map(|(&i, _)| p.items.ids[i as usize].clone()).collect()
        })
        .unwrap_or_default();
    RankQuery { customer_id: Some(customer.to_owned()), basket, k, touchpoint, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xsell_core::{LogBuilder, LogLine};

    #[test]
    fn a_customer_is_due_once_their_median_interval_has_passed() {
        let mut b = LogBuilder::new();
        let day = 86_400_000;
        let orders = [
            ("a1", "weekly", 0),
            ("a2", "weekly", 7 * day),
            ("a3", "weekly", 14 * day),
            ("b1", "monthly", 0),
            ("b2", "monthly", 30 * day),
            ("c1", "once", 0),
        ];
        for (o, c, ts) in orders {
            b.push(LogLine {
                order_id: Some(o),
                customer_id: Some(c),
                item_id: Some("x"),
                item_name: None,
                category: None,
                quantity: 1,
                unit_price: None,
                ts: Some(ts),
                is_return: false,
            });
        }
        let log = b.finish().unwrap();
        let (due, now) = due(&log, Some(40 * day));
        assert_eq!(now, 40 * day);
        assert!(due["weekly"], "26 days since the last weekly order");
        assert!(!due["monthly"], "10 days of a 30-day interval");
        assert!(due["once"], "one order: no interval to wait for");
    }
}

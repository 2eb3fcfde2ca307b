//! A [`Tally`] as parquet tables, one directory of them (a bundle's `aggregates/`), so that
//! `xsell train --update` can fold new orders into it and data scientists can read it (pyarrow,
//! DataFusion). Items and customers are numbered by their row in `items.parquet` and
//! `customers.parquet`; every other table refers to them by those numbers.
//!
//! ```text
//! summary.parquet        orders, first_ts, last_ts, max_order_items (one row)
//! items.parquet          item, item_id, item_name, category, unit_price, price_sum, price_lines,
//!                        orders, paired_orders, returns
//! customers.parquet      customer, customer_id, orders, lines, returns
//! history.parquet        customer, item, orders, since
//! pairs.parquet          item_a, item_b (item_a < item_b), orders
//! recent.parquet         order (0 = oldest kept), item
//! tracked.parquet        pair, item_a, item_b
//! tracked_items.parquet  pair, item, orders
//! tracked_pairs.parquet  pair, other, orders
//! ```

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use ndarray::Array2;
use xsell_core::{Catalog, Csr, Tally};

use crate::tables::{TableReader, f32s, read_batches};
use crate::write::write_batch;
use crate::{DataError, Result};

fn u32s(v: impl IntoIterator<Item = u32>) -> ArrayRef {
    Arc::new(v.into_iter().collect::<UInt32Array>())
}

fn write(dir: &Path, file: &str, columns: Vec<(&str, ArrayRef)>) -> Result<()> {
    let path = dir.join(file);
    let schema = Schema::new(columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), a.null_count() > 0)).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|(_, a)| a).collect())
        .map_err(|e| DataError::BadTable { path: path.clone(), reason: e.to_string() })?;
    write_batch(&path, &batch)
}

/// `(row, column, value)` of every stored entry.
fn triples(csr: &Csr) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let rows = (0..csr.n_rows()).flat_map(|r| std::iter::repeat_n(r as u32, csr.row(r).0.len())).collect();
    (rows, csr.indices.clone(), csr.values.clone())
}

/// Writes `t` as the tables above into `dir` (created).
pub fn write_tally(dir: &Path, t: &Tally) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io { path: dir.into(), source })?;
    let span = |f: fn((i64, i64)) -> i64| -> ArrayRef { Arc::new(Int64Array::from(vec![t.span.map(f)])) };
    write(
        dir,
        "summary.parquet",
        vec![
            ("orders", Arc::new(UInt64Array::from(vec![t.n_orders]))),
            ("first_ts", span(|s| s.0)),
            ("last_ts", span(|s| s.1)),
            ("max_order_items", Arc::new(UInt64Array::from(vec![t.max_order_items as u64]))),
        ],
    )?;
    let c = &t.catalog;
    let sums = |k: usize| c.price_sums.get(k).copied().unwrap_or((0.0, 0));
    write(
        dir,
        "items.parquet",
        vec![
            ("item", u32s(0..c.len() as u32)),
            ("item_id", Arc::new(c.ids.iter().map(|s| Some(s.as_str())).collect::<StringArray>())),
            ("item_name", Arc::new(c.names.iter().map(|s| s.as_deref()).collect::<StringArray>())),
            ("category", Arc::new(c.categories.iter().map(|s| s.as_deref()).collect::<StringArray>())),
            ("unit_price", f32s(&c.prices)),
            ("price_sum", Arc::new((0..c.len()).map(|k| sums(k).0).collect::<Float64Array>())),
            ("price_lines", u32s((0..c.len()).map(|k| sums(k).1))),
            ("orders", f32s(&t.item_orders)),
            ("paired_orders", f32s(&t.item_paired_orders)),
            ("returns", f32s(&t.item_returns)),
        ],
    )?;
    write(
        dir,
        "customers.parquet",
        vec![
            ("customer", u32s(0..t.customers.len() as u32)),
            ("customer_id", Arc::new(t.customers.iter().map(|s| Some(s.as_str())).collect::<StringArray>())),
            ("orders", f32s(&t.customer_orders)),
            ("lines", f32s(&t.customer_lines)),
            ("returns", f32s(&t.customer_returns)),
        ],
    )?;
    let (hc, hi, hn) = triples(&t.history);
    let since: Vec<f32> = hc.iter().zip(&hi).map(|(&c, &i)| t.since.get(c as usize, i)).collect();
    write(dir, "history.parquet", vec![("customer", u32s(hc)), ("item", u32s(hi)), ("orders", f32s(&hn)), ("since", f32s(&since))])?;
    let (pa, pb, pn) = triples(&t.pairs);
    write(dir, "pairs.parquet", vec![("item_a", u32s(pa)), ("item_b", u32s(pb)), ("orders", f32s(&pn))])?;
    let orders = t.recent.iter().enumerate().flat_map(|(k, o)| std::iter::repeat_n(k as u32, o.len()));
    write(dir, "recent.parquet", vec![("order", u32s(orders)), ("item", u32s(t.recent.iter().flatten().copied()))])?;
    write(
        dir,
        "tracked.parquet",
        vec![
            ("pair", u32s(0..t.tracked.len() as u32)),
            ("item_a", u32s(t.tracked.iter().map(|p| p.0))),
            ("item_b", u32s(t.tracked.iter().map(|p| p.1))),
        ],
    )?;
    let (tp, ti, tn) = triples(&t.tracked_items);
    write(dir, "tracked_items.parquet", vec![("pair", u32s(tp)), ("item", u32s(ti)), ("orders", f32s(&tn))])?;
    let nz: Vec<((usize, usize), f32)> = t.tracked_pairs.indexed_iter().filter(|(_, v)| **v != 0.0).map(|(ix, v)| (ix, *v)).collect();
    write(
        dir,
        "tracked_pairs.parquet",
        vec![
            ("pair", u32s(nz.iter().map(|((p, _), _)| *p as u32))),
            ("other", u32s(nz.iter().map(|((_, q), _)| *q as u32))),
            ("orders", f32s(&nz.iter().map(|(_, v)| *v).collect::<Vec<_>>())),
        ],
    )
}

impl TableReader<'_> {
    fn open(path: &Path) -> Result<TableReader<'_>> {
        Ok(TableReader { path, batches: read_batches(path)? })
    }

    fn bad(&self, reason: String) -> DataError {
        DataError::BadTable { path: self.path.into(), reason }
    }

    /// A UInt32 column whose values are all below `bound`.
    fn indices(&self, name: &str, bound: usize) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for col in self.column(name, &DataType::UInt32)? {
            out.extend(col.as_primitive::<UInt32Type>().values().iter().copied());
        }
        match out.iter().find(|&&v| v as usize >= bound) {
            Some(v) => Err(self.bad(format!("column '{name}' holds {v}, beyond the {bound} rows it refers to"))),
            None => Ok(out),
        }
    }

    fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Builds a matrix of `n` rows from `(row, column, value)` entries, refusing repeated entries.
fn csr_of(t: &TableReader<'_>, n: usize, rows: &[u32], cols: &[u32], vals: Vec<f32>) -> Result<Csr> {
    let mut out: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for ((&r, &c), v) in rows.iter().zip(cols).zip(vals) {
        out[r as usize].push((c, v));
    }
    let csr = Csr::from_rows(out);
    if (0..n).any(|r| csr.row(r).0.windows(2).any(|w| w[0] == w[1])) {
        return Err(t.bad("an entry is repeated".into()));
    }
    Ok(csr)
}

/// Reads a tally written by [`write_tally`], checking that its tables agree.
pub fn read_tally(dir: &Path) -> Result<Tally> {
    let summary_path = dir.join("summary.parquet");
    let s = TableReader::open(&summary_path)?;
    if s.rows() != 1 {
        return Err(s.bad(format!("{} rows, expected 1", s.rows())));
    }
    let one_u64 = |name: &str| -> Result<u64> { Ok(s.column(name, &DataType::UInt64)?[0].as_primitive::<UInt64Type>().value(0)) };
    let one_ts = |name: &str| -> Result<Option<i64>> {
        let col = &s.column(name, &DataType::Int64)?[0];
        Ok(col.is_valid(0).then(|| col.as_primitive::<Int64Type>().value(0)))
    };
    let span = match (one_ts("first_ts")?, one_ts("last_ts")?) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    let items_path = dir.join("items.parquet");
    let it = TableReader::open(&items_path)?;
    let n_items = it.rows();
    if it.indices("item", n_items)?.iter().enumerate().any(|(k, &v)| v as usize != k) {
        return Err(it.bad("column 'item' is not the row number".into()));
    }
    let mut price_sum = Vec::new();
    for col in it.column("price_sum", &DataType::Float64)? {
        price_sum.extend(col.as_primitive::<Float64Type>().values().iter().copied());
    }
    let catalog = Catalog {
        ids: it.strings("item_id", false)?.into_iter().flatten().collect(),
        names: it.strings("item_name", true)?,
        categories: it.strings("category", true)?,
        prices: it.floats("unit_price")?,
        price_sums: price_sum.into_iter().zip(it.indices("price_lines", u32::MAX as usize)?).collect(),
    };
    let customers_path = dir.join("customers.parquet");
    let cu = TableReader::open(&customers_path)?;
    let n_cust = cu.rows();
    if cu.indices("customer", n_cust)?.iter().enumerate().any(|(k, &v)| v as usize != k) {
        return Err(cu.bad("column 'customer' is not the row number".into()));
    }
    let history_path = dir.join("history.parquet");
    let h = TableReader::open(&history_path)?;
    let (hc, hi) = (h.indices("customer", n_cust)?, h.indices("item", n_items)?);
    let history = csr_of(&h, n_cust, &hc, &hi, h.floats("orders")?)?;
    let since = csr_of(&h, n_cust, &hc, &hi, h.floats("since")?)?;
    let pairs_path = dir.join("pairs.parquet");
    let p = TableReader::open(&pairs_path)?;
    let (pa, pb) = (p.indices("item_a", n_items)?, p.indices("item_b", n_items)?);
    if pa.iter().zip(&pb).any(|(a, b)| a >= b) {
        return Err(p.bad("a pair is not stored as item_a < item_b".into()));
    }
    let pairs = csr_of(&p, n_items, &pa, &pb, p.floats("orders")?)?;
    let recent_path = dir.join("recent.parquet");
    let r = TableReader::open(&recent_path)?;
    let (ro, ri) = (r.indices("order", u32::MAX as usize)?, r.indices("item", n_items)?);
    let mut recent: Vec<Vec<u32>> = Vec::new();
    for (&o, &i) in ro.iter().zip(&ri) {
        if o as usize == recent.len() {
            recent.push(Vec::new());
        } else if o as usize + 1 != recent.len() {
            return Err(r.bad("column 'order' does not count up from 0".into()));
        }
        recent[o as usize].push(i);
    }
    let tracked_path = dir.join("tracked.parquet");
    let tr = TableReader::open(&tracked_path)?;
    let n_tracked = tr.rows();
    let tracked: Vec<(u32, u32)> = tr.indices("item_a", n_items)?.into_iter().zip(tr.indices("item_b", n_items)?).collect();
    let ti_path = dir.join("tracked_items.parquet");
    let ti = TableReader::open(&ti_path)?;
    let tracked_items = csr_of(&ti, n_tracked, &ti.indices("pair", n_tracked)?, &ti.indices("item", n_items)?, ti.floats("orders")?)?;
    let tp_path = dir.join("tracked_pairs.parquet");
    let tp = TableReader::open(&tp_path)?;
    let mut tracked_pairs = Array2::<f32>::zeros((n_tracked, n_tracked));
    for ((a, b), v) in tp.indices("pair", n_tracked)?.into_iter().zip(tp.indices("other", n_tracked)?).zip(tp.floats("orders")?) {
        tracked_pairs[[a as usize, b as usize]] = v;
    }
    let tally = Tally {
        n_orders: one_u64("orders")?,
        span,
        item_orders: it.floats("orders")?,
        item_paired_orders: it.floats("paired_orders")?,
        item_returns: it.floats("returns")?,
        customers: cu.strings("customer_id", false)?.into_iter().flatten().collect(),
        customer_orders: cu.floats("orders")?,
        customer_lines: cu.floats("lines")?,
        customer_returns: cu.floats("returns")?,
        catalog,
        history: history.into(),
        since: since.into(),
        pairs,
        recent,
        tracked,
        tracked_items,
        tracked_pairs,
        max_order_items: one_u64("max_order_items")? as usize,
    };
    if tally.recent.len() as u64 > tally.n_orders {
        return Err(DataError::BadTable { path: recent_path, reason: "more recent orders than orders".into() });
    }
    Ok(tally)
}

//! `Aggregates` as GROUP BY plans over the materialised tables (see [`crate::tables`]), the
//! same counts as `xsell_core::Aggregates::compute`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::error::Result;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ndarray::Array2;
use xsell_core::aggregate::{AggregateConfig, gram_items, gram_pairs};
use xsell_core::{Aggregates, Catalog, Csr, Tally};

use crate::{for_each_batch, write_table};

/// Sizes of the index spaces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) items: usize,
    pub(crate) customers: usize,
}

/// Folds every row of `sql` (BIGINT columns only) into `row`.
async fn rows(ctx: &SessionContext, sql: &str, mut row: impl FnMut(&[i64])) -> Result<()> {
    let start = std::time::Instant::now();
    let mut values = Vec::new();
    let mut n = 0usize;
    for_each_batch(ctx, sql, |b| {
        n += b.num_rows();
        let cols: Vec<_> = b.columns().iter().map(|c| c.as_primitive::<Int64Type>()).collect();
        for r in 0..b.num_rows() {
            values.clear();
            values.extend(cols.iter().map(|c| c.value(r)));
            row(&values);
        }
        Ok(())
    })
    .await?;
    tracing::debug!(rows = n, seconds = start.elapsed().as_secs_f64(), sql = &sql[..sql.len().min(120)], "engine query");
    xsell_data::release_freed_memory();
    Ok(())
}

/// Registers triples of u32 as a small table: a parquet file in the work directory, not an
/// in-memory table, so that a cluster's executors read it too.
async fn register_pairs(ctx: &SessionContext, work: &Path, name: &str, cols: [&str; 3], rows: &[(u32, u32, u32)]) -> Result<()> {
    let schema = Arc::new(Schema::new(cols.iter().map(|c| Field::new(*c, DataType::UInt32, false)).collect::<Vec<_>>()));
    let col = |f: fn(&(u32, u32, u32)) -> u32| Arc::new(UInt32Array::from_iter_values(rows.iter().map(f))) as _;
    let batch = RecordBatch::try_new(schema.clone(), vec![col(|r| r.0), col(|r| r.1), col(|r| r.2)])?;
    let _ = ctx.deregister_table(name)?;
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = work.join(format!("{name}-{n}.parquet"));
    let file = std::fs::File::create(&path)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    ctx.register_parquet(name, &path.to_string_lossy(), ParquetReadOptions::default().schema(&schema)).await
}

/// The aggregates over the orders at positions `0..n`.
pub(crate) async fn compute(
    ctx: &SessionContext,
    work: &Path,
    shape: Shape,
    n: usize,
    cutoff_ts: Option<i64>,
    cfg: &AggregateConfig,
) -> Result<Aggregates> {
    let n_recent = ((n as f64 * cfg.recent_fraction).ceil() as usize).min(n);
    let recent_from = n - n_recent;
    let m_max = cfg.max_order_items;
    let [item_orders, item_recent_orders, item_paired] = item_counts(ctx, shape, n, recent_from, m_max).await?;
    let (customer_orders, customer_lines) = customer_counts(ctx, shape, n).await?;
    let (item_returns, customer_returns) = return_counts(ctx, shape, cutoff_ts).await?;
    let (history, since) = history(ctx, shape, n).await?;

    // every co-purchase count, once, in item order: each item's row is cut to its strongest
    // `max_neighbours` (ties by index) as it streams by, and the Gram of the most-bought items
    // (the diagonal: their paired orders) is filled from the same rows
    let gram_items = gram_items(&item_orders, cfg.gram_items);
    let m = gram_items.len();
    let mut gram_pos = vec![u32::MAX; shape.items];
    let mut gram = Array2::<f32>::zeros((m, m));
    for (g, &i) in gram_items.iter().enumerate() {
        gram_pos[i as usize] = g as u32;
        gram[[g, g]] = item_paired[i as usize];
    }
    let mut pairs: Vec<Vec<(u32, f32)>> = vec![Vec::new(); shape.items];
    let mut row: Vec<(u32, f32)> = Vec::new();
    let mut current = u32::MAX;
    let cut = |i: u32, row: &mut Vec<(u32, f32)>, pairs: &mut Vec<Vec<(u32, f32)>>| {
        if i != u32::MAX {
            pairs[i as usize] = xsell_core::aggregate::strongest(std::mem::take(row), cfg.max_neighbours);
        }
    };
    let dir = pair_counts(ctx, work, n, m_max).await?;
    let streamed = rows(
        ctx,
        "SELECT CAST(k / 4294967296 AS BIGINT), CAST(k % 4294967296 AS BIGINT), c FROM (SELECT k, c FROM pc UNION ALL \
         SELECT (k % 4294967296) * 4294967296 + k / 4294967296 AS k, c FROM pc) ORDER BY k",
        |r| {
            let (i, j, c) = (r[0] as u32, r[1] as u32, r[2] as f32);
            if i != current {
                cut(current, &mut row, &mut pairs);
                current = i;
            }
            row.push((j, c));
            let (gi, gj) = (gram_pos[i as usize], gram_pos[j as usize]);
            if gi != u32::MAX && gj != u32::MAX {
                gram[[gi as usize, gj as usize]] = c;
            }
        },
    )
    .await;
    ctx.deregister_table("pc")?;
    let _ = std::fs::remove_dir_all(&dir);
    streamed?;
    cut(current, &mut row, &mut pairs);
    if m > 0 {
        let members: Vec<(u32, u32, u32)> = gram_items.iter().enumerate().map(|(g, &i)| (i, g as u32, 0)).collect();
        register_pairs(ctx, work, "gram", ["item", "g", "unused"], &members).await?;
    }

    // the most co-bought pairs of Gram items and their Gram rows (three- and four-way joins)
    let selected = if cfg.gram_pairs > 0 && m >= 2 { gram_pairs(&gram, cfg.gram_pairs) } else { Vec::new() };
    let mut pair_gram = Array2::<f32>::zeros((selected.len(), m + selected.len()));
    if !selected.is_empty() {
        let sel: Vec<(u32, u32)> = selected.iter().map(|&(a, b)| (gram_items[a as usize], gram_items[b as usize])).collect();
        let dir = orders_holding(ctx, work, &sel, n, m_max).await?;
        let counted = rows(
            ctx,
            &format!(
                "SELECT CAST(k / 4294967296 AS BIGINT), CAST(k % 4294967296 AS BIGINT), c FROM ( \
                 SELECT CAST(po.p AS BIGINT) * 4294967296 + g.g AS k, COUNT(*) AS c FROM po JOIN baskets z ON z.pos = po.pos \
                 JOIN gram g ON g.item = z.item WHERE {} GROUP BY k \
                 UNION ALL SELECT CAST(p1.p AS BIGINT) * 4294967296 + {m} + p2.p AS k, COUNT(*) AS c FROM po p1 JOIN po p2 ON p1.pos = p2.pos \
                 GROUP BY k)",
                paired("z", n, m_max)
            ),
            |r| pair_gram[[r[0] as usize, r[1] as usize]] = r[2] as f32,
        )
        .await;
        ctx.deregister_table("po")?;
        let _ = std::fs::remove_dir_all(&dir);
        counted?;
    }

    Ok(Aggregates {
        n_orders: n as u64,
        item_orders,
        n_recent: n_recent as u64,
        item_recent_orders,
        item_returns,
        pairs: Csr::from_rows(pairs),
        history,
        since,
        customer_orders,
        customer_lines,
        customer_returns,
        gram_items,
        gram,
        gram_pairs: selected,
        pair_gram,
    })
}

/// The orders whose pairs count: at positions `0..n` and of at most `m_max` distinct items
/// (`t` is the baskets table's alias).
fn paired(t: &str, n: usize, m_max: usize) -> String {
    format!("{t}.pos < {n} AND {t}.n <= {m_max}")
}

/// Per item, over the orders at positions `0..n`: orders, orders from `recent_from` on, and
/// orders that count toward pairs.
async fn item_counts(ctx: &SessionContext, shape: Shape, n: usize, recent_from: usize, m_max: usize) -> Result<[Vec<f32>; 3]> {
    let mut counts = [vec![0f32; shape.items], vec![0f32; shape.items], vec![0f32; shape.items]];
    rows(
        ctx,
        &format!(
            "SELECT CAST(item AS BIGINT), COUNT(*), CAST(SUM(CASE WHEN pos >= {recent_from} THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN n <= {m_max} THEN 1 ELSE 0 END) AS BIGINT) FROM baskets WHERE pos < {n} GROUP BY item"
        ),
        |r| {
            for (k, c) in counts.iter_mut().enumerate() {
                c[r[0] as usize] = r[k + 1] as f32;
            }
        },
    )
    .await?;
    Ok(counts)
}

/// Per customer, over the orders at positions `0..n`: orders and purchase lines.
async fn customer_counts(ctx: &SessionContext, shape: Shape, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut orders, mut lines) = (vec![0f32; shape.customers], vec![0f32; shape.customers]);
    rows(
        ctx,
        &format!("SELECT cust, COUNT(*), CAST(SUM(n) AS BIGINT) FROM orders WHERE pos < {n} AND cust IS NOT NULL GROUP BY cust"),
        |r| {
            orders[r[0] as usize] = r[1] as f32;
            lines[r[0] as usize] = r[2] as f32;
        },
    )
    .await?;
    Ok((orders, lines))
}

/// Return lines before `cutoff_ts` (all of them when `None`), per item and per customer.
async fn return_counts(ctx: &SessionContext, shape: Shape, cutoff_ts: Option<i64>) -> Result<(Vec<f32>, Vec<f32>)> {
    let before = match cutoff_ts {
        Some(cut) => format!("ts IS NOT NULL AND ts < {cut}"),
        None => "TRUE".into(),
    };
    let (mut items, mut customers) = (vec![0f32; shape.items], vec![0f32; shape.customers]);
    rows(ctx, &format!("SELECT item, COUNT(*) FROM returns WHERE {before} GROUP BY item"), |r| items[r[0] as usize] = r[1] as f32).await?;
    rows(ctx, &format!("SELECT cust, COUNT(*) FROM returns WHERE {before} AND cust IS NOT NULL GROUP BY cust"), |r| {
        customers[r[0] as usize] = r[1] as f32
    })
    .await?;
    Ok((items, customers))
}

/// A [`Csr`] filled from entries sorted by row, then column: nothing per row is held apart
/// (rows of a million customers as vectors would cost their headers and growth slack).
struct SortedCsr(Csr);

impl SortedCsr {
    fn new() -> Self {
        SortedCsr(Csr { indptr: vec![0], ..Default::default() })
    }

    fn push(&mut self, row: usize, col: u32, value: f32) {
        let m = &mut self.0;
        while m.indptr.len() <= row {
            m.indptr.push(m.indices.len() as u32);
        }
        m.indices.push(col);
        m.values.push(value);
    }

    fn finish(mut self, rows: usize) -> Csr {
        let m = &mut self.0;
        while m.indptr.len() <= rows {
            m.indptr.push(m.indices.len() as u32);
        }
        m.indptr.truncate(rows + 1);
        m.indices.shrink_to_fit();
        m.values.shrink_to_fit();
        self.0
    }
}

/// Customer × item over the orders at positions `0..n`: orders containing the item, and the
/// customer's orders after the last one that did.
async fn history(ctx: &SessionContext, shape: Shape, n: usize) -> Result<(Arc<Csr>, Arc<Csr>)> {
    let mut hist = SortedCsr::new();
    let mut since = Vec::new();
    rows(
        ctx,
        &format!(
            "SELECT cust AS c, CAST(item AS BIGINT) AS i, COUNT(*), MIN(after) FROM (SELECT cust, item, \
             CAST(DENSE_RANK() OVER (PARTITION BY cust ORDER BY pos DESC) - 1 AS BIGINT) AS after \
             FROM baskets WHERE pos < {n} AND cust IS NOT NULL) GROUP BY cust, item ORDER BY c, i"
        ),
        |r| {
            hist.push(r[0] as usize, r[1] as u32, r[2] as f32);
            since.push(r[3] as f32);
        },
    )
    .await?;
    let hist = hist.finish(shape.customers);
    since.shrink_to_fit();
    let since = Csr { indptr: hist.indptr.clone(), indices: hist.indices.clone(), values: since };
    Ok((Arc::new(hist), Arc::new(since)))
}

/// Writes and registers `pc (k, c)`: every co-purchase count of the orders whose pairs count,
/// each unordered pair once under the key `i·2³² + j`, `i < j` (one integer column groups
/// fastest). Returns the table's directory.
async fn pair_counts(ctx: &SessionContext, work: &Path, n: usize, m_max: usize) -> Result<String> {
    write_table(
        ctx,
        work,
        "pc",
        &format!(
            "SELECT a.item * 4294967296 + b.item AS k, COUNT(*) AS c FROM baskets a JOIN baskets b ON a.pos = b.pos \
             WHERE {} AND {} AND a.item < b.item GROUP BY k",
            paired("a", n, m_max),
            paired("b", n, m_max),
        ),
    )
    .await
}

/// Writes and registers `po (p, pos)`: the orders holding each pair `sel[p]` (item indices)
/// among those whose pairs count, once (at most the pairs' co-purchase counts), for joining
/// with their items and with each other. Returns the table's directory.
async fn orders_holding(ctx: &SessionContext, work: &Path, sel: &[(u32, u32)], n: usize, m_max: usize) -> Result<String> {
    let sel: Vec<(u32, u32, u32)> = sel.iter().enumerate().map(|(p, &(a, b))| (p as u32, a, b)).collect();
    register_pairs(ctx, work, "sel", ["p", "ia", "ib"], &sel).await?;
    write_table(
        ctx,
        work,
        "po",
        &format!(
            "SELECT s.p, x.pos FROM sel s JOIN baskets x ON x.item = s.ia JOIN baskets y ON y.pos = x.pos AND y.item = s.ib WHERE {}",
            paired("x", n, m_max)
        ),
    )
    .await
}

/// The additive counts ([`Tally`]) of the orders at positions `0..n` and of every return line,
/// tracking the pairs [`Track::Strongest`](xsell_core::tally::Track) selects: what
/// `Tally::compute` counts over the same orders, in the engine's index space. `catalog` (with
/// its price sums) and `customers` are the engine's; `has_time` whether any line has a time.
pub(crate) async fn tally(
    ctx: &SessionContext,
    work: &Path,
    (catalog, customers): (&Catalog, &[String]),
    n: usize,
    has_time: bool,
    cfg: &AggregateConfig,
) -> Result<Tally> {
    let shape = Shape { items: catalog.len(), customers: customers.len() };
    let m_max = cfg.max_order_items;
    let [item_orders, _, item_paired_orders] = item_counts(ctx, shape, n, n, m_max).await?;
    let (customer_orders, customer_lines) = customer_counts(ctx, shape, n).await?;
    let (item_returns, customer_returns) = return_counts(ctx, shape, None).await?;
    let (history, since) = history(ctx, shape, n).await?;

    // every pair's count, uncut: the upper triangle, row by row
    let dir = pair_counts(ctx, work, n, m_max).await?;
    let mut upper = SortedCsr::new();
    let streamed = rows(ctx, "SELECT CAST(k / 4294967296 AS BIGINT), CAST(k % 4294967296 AS BIGINT), c FROM pc ORDER BY k", |r| {
        upper.push(r[0] as usize, r[1] as u32, r[2] as f32)
    })
    .await;
    ctx.deregister_table("pc")?;
    let _ = std::fs::remove_dir_all(&dir);
    streamed?;

    let mut span = None;
    if has_time {
        for_each_batch(ctx, &format!("SELECT MIN(ts), MAX(ts) FROM orders WHERE pos < {n}"), |b| {
            let (lo, hi) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_primitive::<Int64Type>());
            if b.num_rows() > 0 && lo.is_valid(0) && hi.is_valid(0) {
                span = Some((lo.value(0), hi.value(0)));
            }
            Ok(())
        })
        .await?;
    }
    // the newest orders' items: the recent period's share
    let keep = ((n as f64 * cfg.recent_fraction).ceil() as usize).min(n);
    let mut recent: Vec<Vec<u32>> = vec![Vec::new(); keep];
    rows(ctx, &format!("SELECT pos, CAST(item AS BIGINT) FROM baskets WHERE pos >= {} AND pos < {n}", n - keep), |r| {
        recent[r[0] as usize - (n - keep)].push(r[1] as u32)
    })
    .await?;
    for order in &mut recent {
        order.sort_unstable();
    }

    let mut t = Tally {
        catalog: catalog.clone(),
        customers: customers.to_vec(),
        n_orders: n as u64,
        span,
        item_orders,
        item_paired_orders,
        item_returns,
        customer_orders,
        customer_lines,
        customer_returns,
        history,
        since,
        pairs: upper.finish(shape.items),
        recent,
        max_order_items: m_max,
        ..Default::default()
    };
    t.tracked = t.strongest_pairs(cfg);
    let p = t.tracked.len();
    t.tracked_pairs = Array2::<f32>::zeros((p, p));
    let mut tracked_items: Vec<Vec<(u32, f32)>> = vec![Vec::new(); p];
    if p > 0 {
        let dir = orders_holding(ctx, work, &t.tracked, n, m_max).await?;
        let counted = async {
            rows(ctx, "SELECT CAST(po.p AS BIGINT), CAST(z.item AS BIGINT), COUNT(*) FROM po JOIN baskets z ON z.pos = po.pos GROUP BY po.p, z.item", |r| {
                tracked_items[r[0] as usize].push((r[1] as u32, r[2] as f32))
            })
            .await?;
            rows(ctx, "SELECT CAST(p1.p AS BIGINT), CAST(p2.p AS BIGINT), COUNT(*) FROM po p1 JOIN po p2 ON p1.pos = p2.pos GROUP BY p1.p, p2.p", |r| {
                t.tracked_pairs[[r[0] as usize, r[1] as usize]] = r[2] as f32
            })
            .await
        }
        .await;
        ctx.deregister_table("po")?;
        let _ = std::fs::remove_dir_all(&dir);
        counted?;
    }
    t.tracked_items = Csr::from_rows(tracked_items);
    Ok(t)
}

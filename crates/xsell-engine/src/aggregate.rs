//! `Aggregates` as GROUP BY plans over the materialised tables (see [`crate::tables`]), the
//! same counts as `xsell_core::Aggregates::compute`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::error::Result;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ndarray::Array2;
use xsell_core::aggregate::{AggregateConfig, gram_items, gram_pairs};
use xsell_core::{Aggregates, Csr};

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
    // the orders whose pairs count: in range and at most max_order_items distinct items
    let paired = |t: &str| format!("{t}.pos < {n} AND {t}.n <= {m_max}");

    let mut item_orders = vec![0f32; shape.items];
    let mut item_recent_orders = vec![0f32; shape.items];
    let mut item_paired = vec![0f32; shape.items];
    rows(
        ctx,
        &format!(
            "SELECT CAST(item AS BIGINT), COUNT(*), CAST(SUM(CASE WHEN pos >= {recent_from} THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN n <= {m_max} THEN 1 ELSE 0 END) AS BIGINT) FROM baskets WHERE pos < {n} GROUP BY item"
        ),
        |r| {
            item_orders[r[0] as usize] = r[1] as f32;
            item_recent_orders[r[0] as usize] = r[2] as f32;
            item_paired[r[0] as usize] = r[3] as f32;
        },
    )
    .await?;

    let mut customer_orders = vec![0f32; shape.customers];
    let mut customer_lines = vec![0f32; shape.customers];
    rows(
        ctx,
        &format!("SELECT cust, COUNT(*), CAST(SUM(n) AS BIGINT) FROM orders WHERE pos < {n} AND cust IS NOT NULL GROUP BY cust"),
        |r| {
            customer_orders[r[0] as usize] = r[1] as f32;
            customer_lines[r[0] as usize] = r[2] as f32;
        },
    )
    .await?;

    let returns_before = match cutoff_ts {
        Some(cut) => format!("ts IS NOT NULL AND ts < {cut}"),
        None => "TRUE".into(),
    };
    let mut item_returns = vec![0f32; shape.items];
    rows(ctx, &format!("SELECT item, COUNT(*) FROM returns WHERE {returns_before} GROUP BY item"), |r| {
        item_returns[r[0] as usize] = r[1] as f32
    })
    .await?;
    let mut customer_returns = vec![0f32; shape.customers];
    rows(ctx, &format!("SELECT cust, COUNT(*) FROM returns WHERE {returns_before} AND cust IS NOT NULL GROUP BY cust"), |r| {
        customer_returns[r[0] as usize] = r[1] as f32
    })
    .await?;

    // customer × item: orders containing the item, and the customer's orders after the last one
    let mut hist: Vec<Vec<(u32, f32)>> = vec![Vec::new(); shape.customers];
    let mut since: Vec<Vec<(u32, f32)>> = vec![Vec::new(); shape.customers];
    rows(
        ctx,
        &format!(
            "SELECT cust, CAST(item AS BIGINT), COUNT(*), MIN(after) FROM (SELECT cust, item, \
             CAST(DENSE_RANK() OVER (PARTITION BY cust ORDER BY pos DESC) - 1 AS BIGINT) AS after \
             FROM baskets WHERE pos < {n} AND cust IS NOT NULL) GROUP BY cust, item"
        ),
        |r| {
            hist[r[0] as usize].push((r[1] as u32, r[2] as f32));
            since[r[0] as usize].push((r[1] as u32, r[3] as f32));
        },
    )
    .await?;

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
    // each unordered pair is counted once (key i·2³² + j, i < j: one integer column groups
    // fastest), written to the work directory, then read in both directions in key order
    let dir = write_table(
        ctx,
        work,
        "pc",
        &format!(
            "SELECT a.item * 4294967296 + b.item AS k, COUNT(*) AS c FROM baskets a JOIN baskets b ON a.pos = b.pos \
             WHERE {} AND {} AND a.item < b.item GROUP BY k",
            paired("a"),
            paired("b"),
        ),
    )
    .await?;
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
        let sel: Vec<(u32, u32, u32)> =
            selected.iter().enumerate().map(|(p, &(a, b))| (p as u32, gram_items[a as usize], gram_items[b as usize])).collect();
        register_pairs(ctx, work, "sel", ["p", "ia", "ib"], &sel).await?;
        // the orders holding each selected pair, written once (at most the pairs' co-purchase
        // counts), then joined with their items and with each other
        let dir = write_table(
            ctx,
            work,
            "po",
            &format!(
                "SELECT s.p, x.pos FROM sel s JOIN baskets x ON x.item = s.ia JOIN baskets y ON y.pos = x.pos AND y.item = s.ib WHERE {}",
                paired("x")
            ),
        )
        .await?;
        let counted = rows(
            ctx,
            &format!(
                "SELECT CAST(k / 4294967296 AS BIGINT), CAST(k % 4294967296 AS BIGINT), c FROM ( \
                 SELECT CAST(po.p AS BIGINT) * 4294967296 + g.g AS k, COUNT(*) AS c FROM po JOIN baskets z ON z.pos = po.pos \
                 JOIN gram g ON g.item = z.item WHERE {} GROUP BY k \
                 UNION ALL SELECT CAST(p1.p AS BIGINT) * 4294967296 + {m} + p2.p AS k, COUNT(*) AS c FROM po p1 JOIN po p2 ON p1.pos = p2.pos \
                 GROUP BY k)",
                paired("z")
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
        history: Csr::from_rows(hist),
        since: Csr::from_rows(since),
        customer_orders,
        customer_lines,
        customer_returns,
        gram_items,
        gram,
        gram_pairs: selected,
        pair_gram,
    })
}

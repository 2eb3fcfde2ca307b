//! The log, cleaned (protocol steps 1 and 2) and integer-coded once, as parquet tables in the
//! engine's work directory:
//!
//! * `items (item_id, name, category, price, ix)`: every item on a kept line, `ix` in id order;
//! * `customers (customer_id, ix)`: every non-empty customer id on a kept line;
//! * `orders (order_id, cust, ts, n, pos)`: purchase orders, `n` distinct items, `pos` the
//!   position in the protocol's time order (time, nulls first, then the id, as integers when
//!   every id is one);
//! * `baskets (pos, item, cust, n)`: each order's distinct items;
//! * `returns (item, cust, ts)`: return lines (a return flag or a negative quantity).
//!
//! Every later plan reads these, never the raw files.

use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, cast, ident, lit};
use xsell_core::{Catalog, Order};
use xsell_data::{Field, FilePlan, Source};

use crate::{LogCounts, for_each_batch, write_table};

/// The cleaned lines: ids present and non-empty, empty customers as NULL, `ret` for a return
/// flag or a negative quantity (a missing or NaN quantity is one unit bought, as the reader
/// takes it).
const CLEAN: &str = "SELECT order_id, CASE WHEN customer_id = '' THEN NULL ELSE customer_id END AS customer_id, item_id, \
     item_name, category, unit_price, ts, \
     (COALESCE(is_return, false) OR (COALESCE(quantity, 1.0) < -0.0 AND NOT isnan(quantity))) AS ret \
     FROM lines WHERE order_id IS NOT NULL AND order_id <> '' AND item_id IS NOT NULL AND item_id <> ''";

/// Registers every file as one `lines` view in the canonical schema, then writes the tables.
pub(crate) async fn materialise(ctx: &SessionContext, work: &Path, plans: &[FilePlan]) -> Result<()> {
    let mut all: Option<DataFrame> = None;
    for plan in plans {
        let df = normalised(ctx, plan).await?;
        all = Some(match all {
            None => df,
            Some(a) => a.union(df)?,
        });
    }
    let lines = all.ok_or_else(|| datafusion::error::DataFusionError::Plan("no input file".into()))?;
    ctx.register_table("lines", lines.into_view())?;
    ctx.register_table("clean", ctx.sql(CLEAN).await?.into_view())?;
    let write = |name: &'static str, sql: String| async move { write_table(ctx, work, name, &sql).await.map(drop) };
    write(
        "items",
        "SELECT item_id, MIN(NULLIF(TRIM(item_name), '')) AS name, MIN(NULLIF(TRIM(category), '')) AS category, \
         AVG(CASE WHEN NOT ret AND unit_price > 0.0 AND unit_price <= 1.7976931348623157e308 THEN unit_price END) AS price, \
         SUM(CASE WHEN NOT ret AND unit_price > 0.0 AND unit_price <= 1.7976931348623157e308 THEN unit_price END) AS price_sum, \
         COUNT(CASE WHEN NOT ret AND unit_price > 0.0 AND unit_price <= 1.7976931348623157e308 THEN 1 END) AS price_lines, \
         CAST(ROW_NUMBER() OVER (ORDER BY item_id) - 1 AS BIGINT) AS ix FROM clean GROUP BY item_id"
            .into(),
    )
    .await?;
    write(
        "customers",
        "SELECT customer_id, CAST(ROW_NUMBER() OVER (ORDER BY customer_id) - 1 AS BIGINT) AS ix \
         FROM (SELECT DISTINCT customer_id FROM clean WHERE customer_id IS NOT NULL)"
            .into(),
    )
    .await?;
    write(
        "orders0",
        "SELECT o.order_id, c.ix AS cust, o.ts, o.n FROM (SELECT order_id, MIN(customer_id) AS customer_id, MIN(ts) AS ts, \
         CAST(COUNT(DISTINCT item_id) AS BIGINT) AS n FROM clean WHERE NOT ret GROUP BY order_id) o \
         LEFT JOIN customers c ON c.customer_id = o.customer_id"
            .into(),
    )
    .await?;
    // ids order as integers when every id is one (protocol::chronological)
    let mut non_numeric = 0i64;
    for_each_batch(
        ctx,
        "SELECT COUNT(*) FROM orders0 WHERE TRY_CAST(TRIM(order_id) AS DECIMAL(38, 0)) IS NULL OR TRIM(order_id) LIKE '%.%'",
        |b| {
            non_numeric += b.column(0).as_primitive::<Int64Type>().value(0);
            Ok(())
        },
    )
    .await?;
    let key = if non_numeric == 0 { "TRY_CAST(TRIM(order_id) AS DECIMAL(38, 0)), order_id" } else { "order_id" };
    write(
        "orders",
        format!(
            "SELECT order_id, cust, ts, n, CAST(ROW_NUMBER() OVER (ORDER BY ts ASC NULLS FIRST, {key}) - 1 AS BIGINT) AS pos FROM orders0"
        ),
    )
    .await?;
    write(
        "baskets",
        "SELECT o.pos, i.ix AS item, o.cust, o.n FROM (SELECT DISTINCT order_id, item_id FROM clean WHERE NOT ret) l \
         JOIN orders o ON o.order_id = l.order_id JOIN items i ON i.item_id = l.item_id"
            .into(),
    )
    .await?;
    write(
        "returns",
        "SELECT i.ix AS item, c.ix AS cust, r.ts FROM clean r JOIN items i ON i.item_id = r.item_id \
         LEFT JOIN customers c ON c.customer_id = r.customer_id WHERE r.ret"
            .into(),
    )
    .await?;
    Ok(())
}

/// One file's columns as the canonical fields, cast to the canonical types.
async fn normalised(ctx: &SessionContext, plan: &FilePlan) -> Result<DataFrame> {
    let path = plan.path.to_string_lossy();
    let df = ctx.read_parquet(path.as_ref(), ParquetReadOptions::default().file_extension("")).await?;
    let exprs: Vec<Expr> = Field::ALL
        .iter()
        .zip(&plan.sources)
        .map(|(&field, source)| {
            let target = field.target().0;
            let e = match source {
                Source::Column { name, found, .. } => match (field, found) {
                    (Field::Ts, DataType::Int64) => ident(name),
                    (Field::Ts, _) => cast(cast(ident(name), DataType::Timestamp(TimeUnit::Millisecond, None)), DataType::Int64),
                    _ => cast(ident(name), target),
                },
                Source::Constant(v) => lit(v.clone()),
                Source::Absent => cast(lit(ScalarValue::Null), if field == Field::Ts { DataType::Int64 } else { target }),
            };
            e.alias(field.canonical())
        })
        .collect();
    df.select(exprs)
}

/// Column `k` of a batch as plain UTF-8 (the parquet reader hands strings back as views).
fn utf8(b: &RecordBatch, k: usize) -> Result<ArrayRef> {
    Ok(datafusion::arrow::compute::cast(b.column(k), &DataType::Utf8)?)
}

/// Line, order and return totals.
pub(crate) async fn counts(ctx: &SessionContext) -> Result<LogCounts> {
    let mut c = LogCounts::default();
    let one = |sql: &'static str| async move {
        let mut v = 0i64;
        for_each_batch(ctx, sql, |b| {
            let a = b.column(0).as_primitive::<Int64Type>();
            v += if a.is_valid(0) { a.value(0) } else { 0 };
            Ok(())
        })
        .await?;
        Ok::<u64, datafusion::error::DataFusionError>(v as u64)
    };
    c.lines = one("SELECT COUNT(*) FROM lines").await?;
    // kept lines and whether any has a time, in one scan of the raw files
    let (mut kept, mut timed) = (0i64, 0i64);
    for_each_batch(ctx, "SELECT COUNT(*), COUNT(ts) FROM clean", |b| {
        kept += b.column(0).as_primitive::<Int64Type>().value(0);
        timed += b.column(1).as_primitive::<Int64Type>().value(0);
        Ok(())
    })
    .await?;
    c.dropped = c.lines - kept as u64;
    c.has_time = timed > 0;
    c.orders = one("SELECT COUNT(*) FROM orders").await?;
    c.returns = one("SELECT COUNT(*) FROM returns").await?;
    Ok(c)
}

/// The catalog and the customers, in index order.
pub(crate) async fn catalog(ctx: &SessionContext) -> Result<(Catalog, Vec<String>)> {
    let mut cat = Catalog::default();
    let sql = "SELECT item_id, name, category, CAST(price AS DOUBLE), CAST(COALESCE(price_sum, 0) AS DOUBLE), \
               CAST(price_lines AS BIGINT) FROM items ORDER BY ix";
    for_each_batch(ctx, sql, |b| {
        let (ids, names, cats) = (utf8(b, 0)?, utf8(b, 1)?, utf8(b, 2)?);
        let (ids, names, cats) = (ids.as_string::<i32>(), names.as_string::<i32>(), cats.as_string::<i32>());
        let price = b.column(3).as_primitive::<Float64Type>();
        let (sum, lines) = (b.column(4).as_primitive::<Float64Type>(), b.column(5).as_primitive::<Int64Type>());
        for r in 0..b.num_rows() {
            cat.price_sums.push((sum.value(r), lines.value(r) as u32));
            cat.ids.push(ids.value(r).to_owned());
            cat.names.push(names.is_valid(r).then(|| names.value(r).to_owned()));
            cat.categories.push(cats.is_valid(r).then(|| cats.value(r).to_owned()));
            cat.prices.push(if price.is_valid(r) { price.value(r) as f32 } else { f32::NAN });
        }
        Ok(())
    })
    .await?;
    let mut customers = Vec::new();
    for_each_batch(ctx, "SELECT customer_id FROM customers ORDER BY ix", |b| {
        customers.extend(utf8(b, 0)?.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_owned()));
        Ok(())
    })
    .await?;
    Ok((cat, customers))
}

/// The longest order id, in bytes.
pub(crate) async fn longest_order_id(ctx: &SessionContext) -> Result<usize> {
    let mut n = 0;
    for_each_batch(ctx, "SELECT CAST(MAX(octet_length(order_id)) AS BIGINT) FROM orders", |b| {
        let a = b.column(0).as_primitive::<Int64Type>();
        n = if a.is_valid(0) { a.value(0) as usize } else { 0 };
        Ok(())
    })
    .await?;
    Ok(n)
}

/// The orders at positions `first..`, in time order, with their items in id order.
pub(crate) async fn orders_from(ctx: &SessionContext, first: usize) -> Result<Vec<Order>> {
    let mut orders: Vec<Order> = Vec::new();
    let sql = format!(
        "SELECT o.pos, o.order_id, o.cust, o.ts, b.item FROM orders o JOIN baskets b ON b.pos = o.pos \
         WHERE o.pos >= {first} AND b.pos >= {first} ORDER BY o.pos, b.item"
    );
    for_each_batch(ctx, &sql, |b| {
        let pos = b.column(0).as_primitive::<Int64Type>();
        let ids = utf8(b, 1)?;
        let ids = ids.as_string::<i32>();
        let cust = b.column(2).as_primitive::<Int64Type>();
        let ts = b.column(3).as_primitive::<Int64Type>();
        let item = b.column(4).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let k = pos.value(r) as usize - first;
            if k == orders.len() {
                orders.push(Order {
                    id: ids.value(r).to_owned(),
                    customer: cust.is_valid(r).then(|| cust.value(r) as u32),
                    ts: ts.is_valid(r).then(|| ts.value(r)),
                    items: Vec::new(),
                });
            }
            orders[k].items.push(item.value(r) as u32);
        }
        Ok(())
    })
    .await?;
    Ok(orders)
}

/// The time of the order at `pos`.
pub(crate) async fn order_ts(ctx: &SessionContext, pos: usize) -> Result<Option<i64>> {
    let mut out = None;
    for_each_batch(ctx, &format!("SELECT ts FROM orders WHERE pos = {pos}"), |b| {
        let a = b.column(0).as_primitive::<Int64Type>();
        if b.num_rows() > 0 && a.is_valid(0) {
            out = Some(a.value(0));
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

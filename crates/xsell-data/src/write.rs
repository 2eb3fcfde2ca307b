//! Writing order logs in the canonical schema.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{DataError, Result};

/// One order line in the canonical schema.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawLine {
    /// Basket / invoice id.
    pub order_id: String,
    /// Customer id.
    pub customer_id: Option<String>,
    /// Product id.
    pub item_id: String,
    /// Product text.
    pub item_name: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Units (negative for returns).
    pub quantity: i64,
    /// Price per unit.
    pub unit_price: Option<f64>,
    /// Time, epoch ms.
    pub ts: Option<i64>,
    /// Return line.
    pub is_return: bool,
}

pub(crate) fn canonical_schema() -> Schema {
    Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("item_name", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("quantity", DataType::Int64, false),
        Field::new("unit_price", DataType::Float64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("is_return", DataType::Boolean, false),
    ])
}

/// Writes one parquet batch file (zstd), creating parent directories.
pub(crate) fn write_batch(path: &Path, batch: &RecordBatch) -> Result<()> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let pq = |source| DataError::Parquet { path: path.to_path_buf(), source };
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    writer.write(batch).map_err(pq)?;
    writer.close().map_err(pq)?;
    Ok(())
}

/// Writes order lines to a parquet file in the canonical schema.
pub fn write_lines(path: &Path, lines: &[RawLine]) -> Result<()> {
    let s = |f: fn(&RawLine) -> Option<&str>| Arc::new(lines.iter().map(f).collect::<StringArray>()) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        s(|l| Some(&l.order_id)),
        s(|l| l.customer_id.as_deref()),
        s(|l| Some(&l.item_id)),
        s(|l| l.item_name.as_deref()),
        s(|l| l.category.as_deref()),
        Arc::new(lines.iter().map(|l| l.quantity).collect::<Int64Array>()),
        Arc::new(lines.iter().map(|l| l.unit_price).collect::<Float64Array>()),
        Arc::new(lines.iter().map(|l| l.ts).collect::<TimestampMillisecondArray>()),
        Arc::new(lines.iter().map(|l| Some(l.is_return)).collect::<BooleanArray>()),
    ];
    let batch = RecordBatch::try_new(Arc::new(canonical_schema()), columns)
        .map_err(|e| DataError::BadTable { path: path.into(), reason: e.to_string() })?;
    write_batch(path, &batch)
}

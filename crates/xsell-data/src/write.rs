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

/// A parquet file (zstd) written batch by batch, creating parent directories.
pub struct BatchWriter {
    path: std::path::PathBuf,
    writer: ArrowWriter<std::fs::File>,
}

impl BatchWriter {
    /// Creates the file for batches of `schema`.
    pub(crate) fn create(path: &Path, schema: Arc<Schema>) -> Result<Self> {
        let io = |source| DataError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::File::create(path).map_err(io)?;
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| DataError::Parquet { path: path.to_path_buf(), source })?;
        Ok(BatchWriter { path: path.to_path_buf(), writer })
    }

    /// An order-log file in the canonical schema.
    pub fn order_log(path: &Path) -> Result<Self> {
        Self::create(path, Arc::new(canonical_schema()))
    }

    /// Appends a batch.
    pub(crate) fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|source| DataError::Parquet { path: self.path.clone(), source })
    }

    /// Appends order lines (canonical schema).
    pub fn write_lines(&mut self, lines: &[RawLine]) -> Result<()> {
        let batch = lines_batch(&self.path, lines)?;
        self.write_batch(&batch)
    }

    /// Writes the footer and closes the file.
    pub fn finish(self) -> Result<()> {
        self.writer.close().map_err(|source| DataError::Parquet { path: self.path, source })?;
        Ok(())
    }
}

/// Writes one parquet batch file (zstd), creating parent directories.
pub(crate) fn write_batch(path: &Path, batch: &RecordBatch) -> Result<()> {
    let mut w = BatchWriter::create(path, batch.schema())?;
    w.write_batch(batch)?;
    w.finish()
}

/// Order lines as one record batch in the canonical schema.
fn lines_batch(path: &Path, lines: &[RawLine]) -> Result<RecordBatch> {
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
    RecordBatch::try_new(Arc::new(canonical_schema()), columns)
        .map_err(|e| DataError::BadTable { path: path.into(), reason: e.to_string() })
}

/// Writes order lines to a parquet file in the canonical schema.
pub fn write_lines(path: &Path, lines: &[RawLine]) -> Result<()> {
    let mut w = BatchWriter::order_log(path)?;
    w.write_lines(lines)?;
    w.finish()
}

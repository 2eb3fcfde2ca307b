//! Streaming parquet order-log reader.

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::cast::{CastOptions, can_cast_types, cast_with_options};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use xsell_core::{LogBuilder, LogLine, OrderLog};

use crate::{DataError, Result};

/// A canonical column of the order log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Basket / invoice id (required).
    OrderId,
    /// Customer id.
    CustomerId,
    /// Product id (required).
    ItemId,
    /// Product text.
    ItemName,
    /// Category.
    Category,
    /// Units (negative = returned).
    Quantity,
    /// Price per unit.
    UnitPrice,
    /// Order time.
    Ts,
    /// Return / cancellation flag.
    IsReturn,
}

impl Field {
    /// Every field, in canonical column order.
    pub const ALL: [Field; 9] = [
        Field::OrderId,
        Field::CustomerId,
        Field::ItemId,
        Field::ItemName,
        Field::Category,
        Field::Quantity,
        Field::UnitPrice,
        Field::Ts,
        Field::IsReturn,
    ];

    /// Canonical column name.
    pub fn canonical(self) -> &'static str {
        match self {
            Field::OrderId => "order_id",
            Field::CustomerId => "customer_id",
            Field::ItemId => "item_id",
            Field::ItemName => "item_name",
            Field::Category => "category",
            Field::Quantity => "quantity",
            Field::UnitPrice => "unit_price",
            Field::Ts => "ts",
            Field::IsReturn => "is_return",
        }
    }

    /// Parses a canonical column name.
    pub fn from_canonical(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.canonical() == name)
    }

    fn required(self) -> bool {
        matches!(self, Field::OrderId | Field::ItemId)
    }

    /// The canonical type the field is read as, and how to describe what is accepted.
    pub fn target(self) -> (DataType, &'static str) {
        match self {
            Field::OrderId | Field::CustomerId | Field::ItemId | Field::ItemName | Field::Category => {
                (DataType::Utf8, "a string or integer id")
            }
            Field::Quantity => (DataType::Float64, "an integer or float quantity"),
            Field::UnitPrice => (DataType::Float64, "a number"),
            Field::Ts => (DataType::Timestamp(TimeUnit::Millisecond, None), "a timestamp, a date, or epoch milliseconds (int64)"),
            Field::IsReturn => (DataType::Boolean, "a boolean"),
        }
    }
}

/// Which file column holds each canonical field (real logs say `InvoiceNo`, `StockCode` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    names: [String; 9],
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap { names: Field::ALL.map(|f| f.canonical().to_owned()) }
    }
}

impl ColumnMap {
    /// Reads the column for `field` from `name`.
    pub fn rename(mut self, field: Field, name: impl Into<String>) -> Self {
        self.names[field as usize] = name.into();
        self
    }

    /// Parses `canonical=actual` pairs, e.g. `order_id=InvoiceNo`.
    pub fn parse_pairs<S: AsRef<str>>(pairs: &[S]) -> std::result::Result<Self, String> {
        let mut map = ColumnMap::default();
        for p in pairs {
            let p = p.as_ref();
            let (k, v) = p.split_once('=').ok_or_else(|| format!("column mapping '{p}' is not of the form canonical=actual"))?;
            let field = Field::from_canonical(k.trim())
                .ok_or_else(|| format!("unknown column '{k}' in mapping '{p}'; known: {}", Field::ALL.map(Field::canonical).join(", ")))?;
            if v.trim().is_empty() {
                return Err(format!("column mapping '{p}' has an empty column name"));
            }
            map = map.rename(field, v.trim());
        }
        map.check()?;
        Ok(map)
    }

    /// Refuses a map that reads two canonical fields from one file column.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (a, fa) in Field::ALL.iter().enumerate() {
            for fb in &Field::ALL[a + 1..] {
                if self.name(*fa) == self.name(*fb) {
                    return Err(format!(
                        "columns {} and {} would both be read from column '{}'; map each canonical column to its own column",
                        fa.canonical(),
                        fb.canonical(),
                        self.name(*fa)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The file column read for `field`.
    pub fn name(&self, field: Field) -> &str {
        &self.names[field as usize]
    }
}

/// The parquet files a path or pattern names, sorted: a file, every `*.parquet` below a
/// directory (hive-style `key=value/` partitions included), or a glob. Symbolic links are
/// followed, each directory is walked once (a link cycle ends there) and each file is read once,
/// however many paths or links lead to it (files are told apart by device and inode).
pub fn list_inputs(spec: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(spec);
    let mut files = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if path.is_dir() {
        walk(path, &mut files, &mut seen_dirs)?;
    } else if spec.contains(['*', '?', '[']) {
        let entries = glob::glob(spec).map_err(|e| DataError::BadPattern { spec: spec.into(), reason: e.to_string() })?;
        for entry in entries {
            let p = entry.map_err(|e| DataError::Io { path: e.path().to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
            if p.is_file() {
                files.push(p);
            } else if p.is_dir() {
                walk(&p, &mut files, &mut seen_dirs)?;
            }
        }
    } else if !path.exists() {
        return Err(DataError::Io {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    files.sort();
    let mut seen_files = std::collections::HashSet::new();
    files.retain(|f| seen_files.insert(file_key(f)));
    if files.is_empty() {
        return Err(DataError::NoInput { spec: spec.into() });
    }
    Ok(files)
}

/// What tells two paths to one file apart: device and inode where the platform has them.
fn file_key(p: &Path) -> (u64, u64, PathBuf) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(p) {
            return (m.dev(), m.ino(), PathBuf::new());
        }
    }
    (0, 0, std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<(u64, u64, PathBuf)>) -> Result<()> {
    if !seen.insert(file_key(dir)) {
        return Ok(()); // walked already: a link back up the tree, or a second link to it
    }
    let io = |source| DataError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.starts_with('_') {
            continue; // hidden files, _SUCCESS markers, _temporary dirs
        }
        if p.is_dir() {
            walk(&p, out, seen)?;
        } else if name.ends_with(".parquet") || name.ends_with(".parq") {
            out.push(p);
        }
    }
    Ok(())
}

/// Hive-style `key=value` segments of a path.
fn partition_values(path: &Path) -> Vec<(String, String)> {
    path.parent()
        .into_iter()
        .flat_map(|p| p.components())
        .filter_map(|c| c.as_os_str().to_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Reads an order log with canonical column names.
pub fn read_log(spec: &str) -> Result<OrderLog> {
    read_log_with(spec, &ColumnMap::default(), &mut |_| {})
}

/// Reads an order log; `progress` is told the number of lines read so far after each batch.
pub fn read_log_with(spec: &str, columns: &ColumnMap, progress: &mut dyn FnMut(u64)) -> Result<OrderLog> {
    columns.check().map_err(|reason| DataError::BadMapping { reason })?;
    let files = list_inputs(spec)?;
    let mut builder = LogBuilder::new();
    let mut lines = 0u64;
    for file in &files {
        read_file(file, columns, &mut builder, &mut |n| {
            lines += n;
            progress(lines)
        })?;
    }
    builder.finish().map_err(|source| DataError::Empty { spec: spec.into(), source })
}

/// Where a canonical field's values come from in one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A column of the file: its position among the file's columns, its name and type.
    Column {
        /// Position in the file's schema.
        index: usize,
        /// The column's name in the file.
        name: String,
        /// The column's type in the file (castable to the field's canonical type).
        found: DataType,
    },
    /// A hive partition value (`order_id=…` in the path) for every line of the file.
    Constant(String),
    /// Not in the file (optional fields only).
    Absent,
}

/// How one parquet file's columns map to the canonical fields: one [`Source`] per
/// [`Field::ALL`] entry, checked against the schema (a missing required column, a column
/// named twice or a type that cannot be read is an error naming the file and the column).
/// The in-memory reader and the query engine both read files through it.
#[derive(Debug, Clone)]
pub struct FilePlan {
    /// The file.
    pub path: PathBuf,
    /// Per canonical field, in [`Field::ALL`] order.
    pub sources: Vec<Source>,
}

impl Source {
    /// The column's position in the file, when the values come from one.
    pub fn file_index(&self) -> Option<usize> {
        match self {
            Source::Column { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// A reader of a parquet file that takes its arrow types from the parquet schema, never from
/// the embedded arrow schema (`ARROW:schema`): decoding a damaged one panics inside arrow-ipc 59
/// (found by `arbitrary_parquet_files_never_panic`), and the parquet types are what the checks
/// below need.
pub(crate) fn reader_builder(file: std::fs::File) -> parquet::errors::Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    ParquetRecordBatchReaderBuilder::try_new_with_options(file, ArrowReaderOptions::new().with_skip_arrow_metadata(true))
}

/// Refuses a parquet file whose embedded arrow schema (the `ARROW:schema` footer key) cannot be
/// decoded. Readers that use it, DataFusion's among them, would panic inside arrow-ipc 59 on
/// some damaged ones; this crate's own reader never decodes it ([`reader_builder`]).
pub fn check_embedded_arrow_schema(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let meta = reader_builder(file).map_err(|source| DataError::Parquet { path: path.to_path_buf(), source })?.metadata().clone();
    let footer = meta.file_metadata();
    let Some(kv) = footer.key_value_metadata().filter(|kv| kv.iter().any(|e| e.key == parquet::arrow::ARROW_SCHEMA_META_KEY)) else {
        return Ok(());
    };
    let decoded = quietly(|| parquet::arrow::parquet_to_arrow_schema(footer.schema_descr(), Some(kv)));
    let reason = match decoded {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "it is damaged".to_owned(),
    };
    Err(DataError::BadTable {
        path: path.into(),
        reason: format!(
            "its embedded arrow schema (the footer key {}) cannot be decoded: {reason}; rewrite the file without it \
             (pyarrow: pq.write_table(table, path, store_schema=False))",
            parquet::arrow::ARROW_SCHEMA_META_KEY
        ),
    })
}

/// Runs `f` (which only reads), turning a panic into an error without printing it (the panic
/// hook is process-wide: swapped only for this call).
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out
}

impl FilePlan {
    /// Checks `path`'s schema (from its footer only) against `columns`.
    pub fn new(path: &Path, columns: &ColumnMap) -> Result<Self> {
        let pq = |source| DataError::Parquet { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let reader = reader_builder(file).map_err(pq)?;
        Self::from_schema(path, reader.schema(), columns)
    }

    fn from_schema(path: &Path, schema: &arrow_schema::Schema, columns: &ColumnMap) -> Result<Self> {
        let partitions = partition_values(path);
        let mut sources: Vec<Source> = Vec::new();
        for field in Field::ALL {
            let name = columns.name(field);
            let copies = schema.fields().iter().filter(|f| f.name() == name).count();
            if copies > 1 {
                return Err(DataError::BadTable {
                    path: path.into(),
                    reason: format!("column '{name}' appears {copies} times; give each column its own name"),
                });
            }
            match schema.index_of(name) {
                Ok(ix) => {
                    let found = schema.field(ix).data_type();
                    let (target, expected) = field.target();
                    let castable = match field {
                        // every type casts to a string in arrow, but lists or structs make no id
                        Field::OrderId | Field::CustomerId | Field::ItemId | Field::ItemName | Field::Category => {
                            !found.is_nested() && can_cast_types(found, &target)
                        }
                        Field::Quantity | Field::UnitPrice => found.is_numeric() || found.is_null(),
                        Field::Ts => matches!(
                            found,
                            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Int64 | DataType::Null
                        ),
                        Field::IsReturn => matches!(found, DataType::Boolean | DataType::Null),
                    };
                    if !castable {
                        return Err(DataError::WrongType { path: path.into(), column: name.into(), found: found.to_string(), expected });
                    }
                    sources.push(Source::Column { index: ix, name: name.into(), found: found.clone() });
                }
                Err(_) => match partitions.iter().find(|(k, _)| k == name) {
                    Some((_, v)) if matches!(field.target().0, DataType::Utf8) => sources.push(Source::Constant(v.clone())),
                    _ if field.required() => {
                        return Err(DataError::MissingColumn {
                            path: path.into(),
                            column: name.into(),
                            hint: format!("the {} column; map another name with --column {}=NAME", field.canonical(), field.canonical()),
                            available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
                        });
                    }
                    _ => sources.push(Source::Absent),
                },
            }
        }
        Ok(FilePlan { path: path.into(), sources })
    }
}

fn read_file(path: &Path, columns: &ColumnMap, builder: &mut LogBuilder, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let pq = |source| DataError::Parquet { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let reader = reader_builder(file).map_err(pq)?;
    let plan = FilePlan::from_schema(path, reader.schema(), columns)?;
    // projected batches keep the file's column order: each field's position in them
    let mut sorted: Vec<usize> = plan.sources.iter().filter_map(Source::file_index).collect();
    sorted.sort_unstable();
    let batch_pos: Vec<Option<usize>> =
        plan.sources.iter().map(|s| s.file_index().map(|ix| sorted.binary_search(&ix).expect("read column"))).collect();
    let mask = ProjectionMask::roots(reader.parquet_schema(), sorted.iter().copied());
    let batches = reader.with_projection(mask).with_batch_size(8192).build().map_err(pq)?;
    for batch in batches {
        let batch = batch.map_err(|e| pq(e.into()))?;
        let cols = Columns::new(path, &batch, &plan.sources, &batch_pos, columns)?;
        cols.check_ids(path, columns)?;
        for row in 0..batch.num_rows() {
            builder.push(cols.line(row));
        }
        progress(batch.num_rows() as u64);
    }
    Ok(())
}

/// A quantity as whole units: the sign decides between purchase and return (−0.5 is a return
/// of part of a unit, never a purchase); a NaN counts as one unit bought.
fn quantity(q: f64) -> i64 {
    if q < 0.0 {
        (q.floor() as i64).min(-1)
    } else if q > 0.0 {
        (q.ceil() as i64).max(1)
    } else if q == 0.0 {
        0
    } else {
        1
    }
}

/// One batch's columns, cast to the canonical types.
struct Columns {
    strings: [Option<StrCol>; 5],
    quantity: Option<ArrayRef>,
    price: Option<ArrayRef>,
    ts: Option<ArrayRef>,
    is_return: Option<ArrayRef>,
}

enum StrCol {
    Array(ArrayRef),
    Constant(String),
}

impl Columns {
    fn new(path: &Path, batch: &RecordBatch, sources: &[Source], batch_pos: &[Option<usize>], names: &ColumnMap) -> Result<Self> {
        let opts = CastOptions { safe: false, ..Default::default() };
        let get = |field: Field| -> Result<Option<ArrayRef>> {
            let Some(k) = batch_pos[field as usize] else { return Ok(None) };
            let array = batch.column(k);
            let target = match (field, array.data_type()) {
                // epoch-ms integers are taken as they are
                (Field::Ts, DataType::Int64) => return Ok(Some(array.clone())),
                (f, _) => f.target().0,
            };
            cast_with_options(array, &target, &opts).map(Some).map_err(|e| DataError::BadValue {
                path: path.into(),
                column: names.name(field).into(),
                reason: format!("cannot read as {}: {e}", field.target().1),
            })
        };
        let string = |field: Field| -> Result<Option<StrCol>> {
            Ok(match &sources[field as usize] {
                Source::Constant(v) => Some(StrCol::Constant(v.clone())),
                _ => get(field)?.map(StrCol::Array),
            })
        };
        Ok(Columns {
            strings: [
                string(Field::OrderId)?,
                string(Field::CustomerId)?,
                string(Field::ItemId)?,
                string(Field::ItemName)?,
                string(Field::Category)?,
            ],
            quantity: get(Field::Quantity)?,
            price: get(Field::UnitPrice)?,
            ts: get(Field::Ts)?,
            is_return: get(Field::IsReturn)?,
        })
    }

    /// Refuses ids longer than the serving limit, so that nothing is trained that the server
    /// would refuse in a request.
    fn check_ids(&self, path: &Path, names: &ColumnMap) -> Result<()> {
        let max = xsell_core::model::limits::MAX_ID_LEN;
        for (k, field) in [(0, Field::OrderId), (1, Field::CustomerId), (2, Field::ItemId)] {
            let long = match self.strings[k].as_ref() {
                Some(StrCol::Array(a)) => a.as_string::<i32>().iter().flatten().map(str::len).find(|&n| n > max),
                Some(StrCol::Constant(v)) => Some(v.len()).filter(|&n| n > max),
                None => None,
            };
            if let Some(n) = long {
                return Err(DataError::BadValue {
                    path: path.into(),
                    column: names.name(field).into(),
                    reason: format!("an id is {n} bytes long; at most {max} are accepted (the serving limit)"),
                });
            }
        }
        Ok(())
    }

    fn str(&self, k: usize, row: usize) -> Option<&str> {
        match self.strings[k].as_ref()? {
            StrCol::Constant(v) => Some(v),
            StrCol::Array(a) => {
                let a = a.as_string::<i32>();
                a.is_valid(row).then(|| a.value(row))
            }
        }
    }

    fn line(&self, row: usize) -> LogLine<'_> {
        let int = |a: &Option<ArrayRef>| {
            let a = a.as_ref()?.as_primitive::<Int64Type>();
            a.is_valid(row).then(|| a.value(row))
        };
        let ts = self.ts.as_ref().and_then(|a| match a.data_type() {
            DataType::Int64 => int(&self.ts),
            _ => {
                let a = a.as_primitive::<TimestampMillisecondType>();
                a.is_valid(row).then(|| a.value(row))
            }
        });
        LogLine {
            order_id: self.str(0, row),
            customer_id: self.str(1, row),
            item_id: self.str(2, row),
            item_name: self.str(3, row),
            category: self.str(4, row),
            quantity: self
                .quantity
                .as_ref()
                .and_then(|a| {
                    let a = a.as_primitive::<Float64Type>();
                    a.is_valid(row).then(|| quantity(a.value(row)))
                })
                .unwrap_or(1),
            unit_price: self.price.as_ref().and_then(|a| {
                let a = a.as_primitive::<Float64Type>();
                a.is_valid(row).then(|| a.value(row))
            }),
            ts,
            is_return: self.is_return.as_ref().is_some_and(|a| {
                let a = a.as_boolean();
                a.is_valid(row) && a.value(row)
            }),
        }
    }
}

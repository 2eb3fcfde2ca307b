use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field as AField, Schema};

use crate::generate::{GenerateConfig, generate};
use crate::write::write_batch;
use crate::*;

fn sample(n_orders: usize) -> Vec<RawLine> {
    generate(&GenerateConfig { orders: n_orders, customers: 30, ..Default::default() }).0
}

#[test]
fn generated_logs_round_trip_through_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.parquet");
    let lines = sample(200);
    write_lines(&path, &lines).unwrap();
    let log = read_log(path.to_str().unwrap()).unwrap();
    assert_eq!(log.lines_read as usize, lines.len());
    assert_eq!(log.orders.len(), 200);
    assert_eq!(log.returns.len(), lines.iter().filter(|l| l.is_return).count());
    assert!(log.has_time);
    assert!(log.catalog.categories.iter().all(Option::is_some));
    assert_eq!(sample(200), lines, "the generator is deterministic for a seed");
}

#[test]
fn directories_hive_partitions_and_globs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let lines = sample(100);
    let (a, b) = lines.split_at(lines.len() / 2);
    write_lines(&dir.path().join("dt=2024-01-01/part-0.parquet"), a).unwrap();
    write_lines(&dir.path().join("dt=2024-01-02/part-0.parquet"), b).unwrap();
    std::fs::write(dir.path().join("_SUCCESS"), "").unwrap();
    let whole = read_log(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(whole.lines_read as usize, lines.len());
    let pattern = format!("{}/dt=*/*.parquet", dir.path().display());
    assert_eq!(read_log(&pattern).unwrap().lines_read as usize, lines.len());
}

fn renamed_file(dir: &Path) -> std::path::PathBuf {
    let schema = Schema::new(vec![
        AField::new("InvoiceNo", DataType::Int64, false),
        AField::new("StockCode", DataType::Utf8, false),
        AField::new("Quantity", DataType::Int64, false),
        AField::new("Price", DataType::Float64, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 1, 2, 3])),
        Arc::new(StringArray::from(vec!["a", "b", "a", "b"])),
        Arc::new(Int64Array::from(vec![1, 2, 1, -1])),
        Arc::new(Float64Array::from(vec![Some(1.0), None, Some(1.5), Some(2.0)])),
    ];
    let path = dir.join("retail.parquet");
    write_batch(&path, &RecordBatch::try_new(Arc::new(schema), cols).unwrap()).unwrap();
    path
}

#[test]
fn columns_can_be_renamed_and_optional_ones_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = renamed_file(dir.path());
    let map = ColumnMap::parse_pairs(&["order_id=InvoiceNo", "item_id=StockCode", "quantity=Quantity", "unit_price=Price"]).unwrap();
    let log = read_log_with(path.to_str().unwrap(), &map, &mut |_| {}).unwrap();
    assert_eq!(log.orders.len(), 2, "integer order ids are read as ids");
    assert_eq!(log.returns.len(), 1, "negative quantity is a return signal");
    assert!(!log.has_time);
    assert!(ColumnMap::parse_pairs(&["nonsense=X"]).unwrap_err().contains("unknown column"));
}

#[test]
fn schema_errors_name_the_file_the_column_and_the_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let path = renamed_file(dir.path());
    let spec = path.to_str().unwrap();
    let msg = read_log(spec).unwrap_err().to_string();
    assert!(msg.contains("retail.parquet") && msg.contains("'order_id'") && msg.contains("InvoiceNo"), "{msg}");

    let map = ColumnMap::parse_pairs(&["order_id=InvoiceNo", "item_id=StockCode", "is_return=Price"]).unwrap();
    let msg = read_log_with(spec, &map, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("retail.parquet") && msg.contains("'Price'") && msg.contains("expected a boolean"), "{msg}");

    // a string column read as the quantity
    let map = ColumnMap::default().rename(Field::OrderId, "InvoiceNo").rename(Field::ItemId, "Price").rename(Field::Quantity, "StockCode");
    let msg = read_log_with(spec, &map, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("'StockCode'") && msg.contains("quantity"), "{msg}");
}

#[test]
fn unreadable_missing_and_empty_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"this is not parquet").unwrap();
    let msg = read_log(junk.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("junk.parquet") && msg.contains("not a readable parquet file"), "{msg}");

    let msg = read_log(dir.path().join("nope.parquet").to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("nope.parquet") && msg.contains("no such file"), "{msg}");

    let empty_dir = tempfile::tempdir().unwrap();
    assert!(matches!(read_log(empty_dir.path().to_str().unwrap()), Err(DataError::NoInput { .. })));

    let only_returns: Vec<RawLine> = sample(20)
        .into_iter()
        .filter(|l| l.is_return)
        .chain([RawLine { order_id: "C1".into(), item_id: "x".into(), quantity: -1, is_return: true, ..Default::default() }])
        .collect();
    let path = dir.path().join("returns.parquet");
    write_lines(&path, &only_returns).unwrap();
    let msg = read_log(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("returns.parquet") && msg.contains("no purchase"), "{msg}");
}

/// A one-column-per-field file from string columns (and a float quantity).
fn table(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let schema = Schema::new(cols.iter().map(|(n, a)| AField::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>());
    let arrays = cols.into_iter().map(|(_, a)| a).collect();
    write_batch(path, &RecordBatch::try_new(Arc::new(schema), arrays).unwrap()).unwrap();
}

fn strings(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

#[test]
fn two_canonical_columns_from_one_column_are_refused() {
    let msg = ColumnMap::parse_pairs(&["customer_id=order_id"]).unwrap_err();
    assert!(msg.contains("order_id") && msg.contains("customer_id"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.parquet");
    table(&path, vec![("order_id", strings(&["1", "1"])), ("item_id", strings(&["a", "b"]))]);
    let map = ColumnMap::default().rename(Field::CustomerId, "order_id");
    let msg = read_log_with(path.to_str().unwrap(), &map, &mut |_| {}).unwrap_err().to_string();
    assert!(msg.contains("'order_id'") && msg.contains("customer_id"), "{msg}");
}

#[test]
fn duplicate_column_names_in_a_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.parquet");
    table(&path, vec![("order_id", strings(&["1"])), ("item_id", strings(&["a"])), ("item_id", strings(&["b"]))]);
    let msg = read_log(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("dup.parquet") && msg.contains("'item_id' appears 2 times"), "{msg}");
}

#[cfg(unix)]
#[test]
fn symlink_loops_and_repeated_files_are_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let lines = sample(50);
    write_lines(&d.join("part-0.parquet"), &lines).unwrap();
    std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
    std::os::unix::fs::symlink("..", d.join("up")).unwrap();
    std::os::unix::fs::symlink("part-0.parquet", d.join("again.parquet")).unwrap();
    std::fs::hard_link(d.join("part-0.parquet"), d.join("hard.parquet")).unwrap();
    assert_eq!(list_inputs(d.to_str().unwrap()).unwrap().len(), 1, "one file however many paths lead to it");
    let log = read_log(d.to_str().unwrap()).unwrap();
    assert_eq!(log.lines_read as usize, lines.len());
    assert_eq!(log.returns.len(), lines.iter().filter(|l| l.is_return).count(), "returns are counted once");
}

#[test]
fn the_sign_of_a_fractional_quantity_decides_purchase_or_return() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.parquet");
    table(
        &path,
        vec![
            ("order_id", strings(&["1", "1", "2", "3"])),
            ("item_id", strings(&["a", "b", "a", "b"])),
            ("quantity", Arc::new(Float64Array::from(vec![1.5, 0.25, -0.5, 2.0])) as ArrayRef),
        ],
    );
    let log = read_log(path.to_str().unwrap()).unwrap();
    assert_eq!(log.returns.len(), 1, "−0.5 is a return");
    assert_eq!(log.orders.len(), 2, "order 2 holds only a return: no purchase order");
}

#[test]
fn ids_longer_than_the_serving_limit_are_refused_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.parquet");
    let long = "x".repeat(10_240);
    table(&path, vec![("order_id", strings(&["1", "1"])), ("item_id", strings(&["a", &long]))]);
    let msg = read_log(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(msg.contains("long.parquet") && msg.contains("'item_id'") && msg.contains("10240 bytes"), "{msg}");
}

mod arbitrary_files {
    use arrow_array::{BooleanArray, Date32Array, Int32Array, TimestampMillisecondArray};
    use proptest::prelude::*;

    use super::*;

    /// One column of a random file: a name (canonical, renamed or unknown), a type, and values
    /// with nulls.
    #[derive(Debug, Clone)]
    enum Col {
        Str(Vec<Option<String>>),
        I64(Vec<Option<i64>>),
        I32(Vec<Option<i32>>),
        F64(Vec<Option<f64>>),
        Bool(Vec<Option<bool>>),
        Ts(Vec<Option<i64>>),
        Date(Vec<Option<i32>>),
    }

    fn col(rows: usize) -> impl Strategy<Value = Col> {
        let n = rows;
        prop_oneof![
            prop::collection::vec(prop::option::of(prop_oneof![".{0,6}", "[a-c]{1,2}", Just(String::new())]), n).prop_map(Col::Str),
            prop::collection::vec(prop::option::of(prop_oneof![any::<i64>(), -3i64..4]), n).prop_map(Col::I64),
            prop::collection::vec(prop::option::of(any::<i32>()), n).prop_map(Col::I32),
            prop::collection::vec(prop::option::of(prop_oneof![any::<f64>(), -2.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY)]), n)
                .prop_map(Col::F64),
            prop::collection::vec(prop::option::of(any::<bool>()), n).prop_map(Col::Bool),
            prop::collection::vec(prop::option::of(any::<i64>()), n).prop_map(Col::Ts),
            prop::collection::vec(prop::option::of(any::<i32>()), n).prop_map(Col::Date),
        ]
    }

    fn array(c: &Col) -> ArrayRef {
        match c {
            Col::Str(v) => Arc::new(StringArray::from(v.clone())),
            Col::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Col::I32(v) => Arc::new(Int32Array::from(v.clone())),
            Col::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Col::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
            Col::Ts(v) => Arc::new(TimestampMillisecondArray::from(v.clone())),
            Col::Date(v) => Arc::new(Date32Array::from(v.clone())),
        }
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(Field::ALL.map(Field::canonical).to_vec()).prop_map(String::from),
            1 => Just("InvoiceNo".to_string()),
            1 => "[a-z]{1,4}",
        ]
    }

    /// Columns, an optional byte flip (position, mask) and an optional truncation.
    type File = (Vec<(String, Col)>, Option<(usize, u8)>, Option<usize>);

    fn file() -> impl Strategy<Value = File> {
        (0usize..12).prop_flat_map(|rows| prop::collection::vec((name(), col(rows)), 1..8)).prop_flat_map(|cols| {
            (Just(cols), prop::option::of((any::<usize>(), any::<u8>())), prop::option::weighted(0.2, any::<usize>()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        /// Random schemas, types, nulls and values, with random byte damage or truncation: every
        /// file ends in a log or a clear error naming the file, never a panic.
        #[test]
        fn arbitrary_parquet_files_never_panic((cols, damage, cut) in file(), rename in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fuzz.parquet");
            let schema = Schema::new(cols.iter().map(|(n, c)| AField::new(n, array(c).data_type().clone(), true)).collect::<Vec<_>>());
            let batch = RecordBatch::try_new(Arc::new(schema), cols.iter().map(|(_, c)| array(c)).collect()).unwrap();
            write_batch(&path, &batch).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some((at, b)) = damage {
                let at = at % bytes.len();
                bytes[at] ^= b | 1;
            }
            if let Some(c) = cut {
                bytes.truncate(c % bytes.len());
            }
            std::fs::write(&path, &bytes).unwrap();
            let map = if rename { ColumnMap::default().rename(Field::OrderId, "InvoiceNo") } else { ColumnMap::default() };
            if let Err(e) = read_log_with(path.to_str().unwrap(), &map, &mut |_| {}) {
                prop_assert!(e.to_string().contains("fuzz.parquet"), "{e}");
            }
            // the engine's check of the embedded arrow schema (which DataFusion decodes)
            if let Err(e) = crate::check_embedded_arrow_schema(&path) {
                prop_assert!(e.to_string().contains("fuzz.parquet"), "{e}");
            }
        }
    }
}

#[test]
fn a_streamed_log_is_the_generated_log_in_bounded_batches() {
    let cfg = GenerateConfig { orders: 3000, customers: 100, items_per_category: 20, ..Default::default() };
    let (whole, truth) = generate(&cfg);
    let mut batches: Vec<Vec<RawLine>> = Vec::new();
    let streamed_truth = crate::generate::generate_batches(&cfg, 500, &mut |b| {
        batches.push(b.to_vec());
        Ok::<(), DataError>(())
    })
    .unwrap();
    assert!(batches.len() > 5 && batches.iter().all(|b| b.len() < 520), "{} batches", batches.len());
    assert_eq!(batches.concat(), whole);
    assert_eq!(streamed_truth.complements, truth.complements);
    assert!(whole.windows(2).all(|w| (w[0].ts, &w[0].order_id) <= (w[1].ts, &w[1].order_id)), "time order, ties by order id");
    // written batch by batch, read back whole
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.parquet");
    let mut w = BatchWriter::order_log(&path).unwrap();
    batches.iter().for_each(|b| w.write_lines(b).unwrap());
    w.finish().unwrap();
    assert_eq!(read_log(path.to_str().unwrap()).unwrap().lines_read, whole.len() as u64);
}

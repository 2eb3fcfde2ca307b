//! The catalog and customer tables of a model bundle, as parquet.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use xsell_core::model::{CustomerTable, ItemTable};

use crate::write::write_batch;
use crate::{DataError, Result};

pub(crate) fn f32s(v: &[f32]) -> ArrayRef {
    Arc::new(Float32Array::from(v.to_vec()))
}

/// Writes the catalog: `item_id, item_name, category, unit_price, orders, recent_orders, return_rate`.
pub fn write_catalog(path: &Path, items: &ItemTable) -> Result<()> {
    let schema = Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("item_name", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("unit_price", DataType::Float32, false),
        Field::new("orders", DataType::Float32, false),
        Field::new("recent_orders", DataType::Float32, false),
        Field::new("return_rate", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(items.ids.iter().map(|s| Some(s.as_str())).collect::<StringArray>()),
        Arc::new(items.names.iter().map(|s| s.as_deref()).collect::<StringArray>()),
        Arc::new(items.categories.iter().map(|s| s.as_deref()).collect::<StringArray>()),
        f32s(&items.prices),
        f32s(&items.orders),
        f32s(&items.recent_orders),
        f32s(&items.return_rate),
    ];
    let batch =
        RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| DataError::BadTable { path: path.into(), reason: e.to_string() })?;
    write_batch(path, &batch)
}

/// Writes the customers: `customer_id, orders, lines, return_rate`.
pub fn write_customers(path: &Path, customers: &CustomerTable, lines: &[f32]) -> Result<()> {
    let schema = Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("orders", DataType::Float32, false),
        Field::new("lines", DataType::Float32, false),
        Field::new("return_rate", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(customers.ids.iter().map(|s| Some(s.as_str())).collect::<StringArray>()),
        f32s(&customers.orders),
        f32s(lines),
        f32s(&customers.return_rate),
    ];
    let batch =
        RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| DataError::BadTable { path: path.into(), reason: e.to_string() })?;
    write_batch(path, &batch)
}

pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    let pq = |source| DataError::Parquet { path: path.into(), source };
    let reader = crate::read::reader_builder(file).map_err(pq)?.build().map_err(pq)?;
    reader.map(|b| b.map_err(|e| pq(e.into()))).collect()
}

pub(crate) struct TableReader<'a> {
    pub(crate) path: &'a Path,
    pub(crate) batches: Vec<RecordBatch>,
}

impl TableReader<'_> {
    pub(crate) fn column(&self, name: &str, ty: &DataType) -> Result<Vec<ArrayRef>> {
        self.batches
            .iter()
            .map(|b| {
                let col = b
                    .column_by_name(name)
                    .ok_or_else(|| DataError::BadTable { path: self.path.into(), reason: format!("missing column '{name}'") })?;
                if col.data_type() != ty {
                    return Err(DataError::WrongType {
                        path: self.path.into(),
                        column: name.into(),
                        found: col.data_type().to_string(),
                        expected: "the bundle's own type",
                    });
                }
                Ok(col.clone())
            })
            .collect()
    }

    pub(crate) fn strings(&self, name: &str, nullable: bool) -> Result<Vec<Option<String>>> {
        let mut out = Vec::new();
        for col in self.column(name, &DataType::Utf8)? {
            let a = col.as_string::<i32>();
            for i in 0..a.len() {
                out.push(a.is_valid(i).then(|| a.value(i).to_owned()));
            }
        }
        if !nullable && out.iter().any(Option::is_none) {
            return Err(DataError::BadTable { path: self.path.into(), reason: format!("column '{name}' has nulls") });
        }
        Ok(out)
    }

    pub(crate) fn floats(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for col in self.column(name, &DataType::Float32)? {
            out.extend(col.as_primitive::<Float32Type>().values().iter().copied());
        }
        Ok(out)
    }
}

/// Reads a catalog written by [`write_catalog`].
pub fn read_catalog(path: &Path) -> Result<ItemTable> {
    let t = TableReader { path, batches: read_batches(path)? };
    Ok(ItemTable {
        ids: t.strings("item_id", false)?.into_iter().flatten().collect(),
        names: t.strings("item_name", true)?,
        categories: t.strings("category", true)?,
        prices: t.floats("unit_price")?,
        orders: t.floats("orders")?,
        recent_orders: t.floats("recent_orders")?,
        return_rate: t.floats("return_rate")?,
    })
}

/// Reads customers written by [`write_customers`]; returns the table and purchase lines.
pub fn read_customers(path: &Path) -> Result<(CustomerTable, Vec<f32>)> {
    let t = TableReader { path, batches: read_batches(path)? };
    let table = CustomerTable {
        ids: t.strings("customer_id", false)?.into_iter().flatten().collect(),
        orders: t.floats("orders")?,
        return_rate: t.floats("return_rate")?,
    };
    Ok((table, t.floats("lines")?))
}

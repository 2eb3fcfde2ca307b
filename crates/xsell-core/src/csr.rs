//! A compressed sparse row matrix: the shape of every sparse table in a model
//! (item → co-purchased items, customer → purchased items).

use serde::{Deserialize, Serialize};

/// Rows of `(column, value)` pairs, columns sorted within a row.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Csr {
    /// `indptr[r]..indptr[r + 1]` is row `r`'s range in `indices` and `values`.
    pub indptr: Vec<u32>,
    /// Column of each stored value.
    pub indices: Vec<u32>,
    /// Stored values.
    pub values: Vec<f32>,
}

impl Csr {
    /// Builds a matrix from rows of `(column, value)` pairs (sorted here by column).
    pub fn from_rows(rows: impl IntoIterator<Item = Vec<(u32, f32)>>) -> Self {
        let mut m = Csr { indptr: vec![0], ..Default::default() };
        for mut row in rows {
            row.sort_unstable_by_key(|&(c, _)| c);
            for (c, v) in row {
                m.indices.push(c);
                m.values.push(v);
            }
            m.indptr.push(m.indices.len() as u32);
        }
        m
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Columns and values of row `r` (empty when `r` is out of range).
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        if r + 1 >= self.indptr.len() {
            return (&[], &[]);
        }
        let (a, b) = (self.indptr[r] as usize, self.indptr[r + 1] as usize);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Value at `(r, c)`, or 0 when not stored.
    pub fn get(&self, r: usize, c: u32) -> f32 {
        let (cols, vals) = self.row(r);
        cols.binary_search(&c).map(|p| vals[p]).unwrap_or(0.0)
    }

    /// Checks the structural invariants against the expected shape.
    pub fn validate(&self, n_rows: usize, n_cols: usize) -> Result<(), String> {
        if self.indptr.len() != n_rows + 1 {
            return Err(format!("indptr has {} entries, expected {}", self.indptr.len(), n_rows + 1));
        }
        if self.indices.len() != self.values.len() {
            return Err("indices and values differ in length".into());
        }
        if self.indptr.first() != Some(&0) || *self.indptr.last().unwrap_or(&0) as usize != self.indices.len() {
            return Err("indptr does not span indices".into());
        }
        if self.indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err("indptr is not monotone".into());
        }
        if self.indices.iter().any(|&c| c as usize >= n_cols) {
            return Err(format!("a column index is out of range (>= {n_cols})"));
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return Err("a value is not finite".into());
        }
        Ok(())
    }
}

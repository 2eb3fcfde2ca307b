//! The cleaned, collapsed order log: protocol steps 1 and 2.
//!
//! [`LogBuilder`] takes raw order lines one at a time (the data crate feeds it record batch by
//! record batch) and keeps only compact, interned state: one entry per order with its distinct
//! items, plus one entry per return line. Raw strings are interned once; the raw log itself is
//! never held.

use std::collections::HashMap;

use crate::{CustomerIx, Error, ItemIx, Result};

/// One raw order line, borrowed from the reader's current batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogLine<'a> {
    /// Basket / invoice id.
    pub order_id: Option<&'a str>,
    /// Customer id, if known.
    pub customer_id: Option<&'a str>,
    /// Product id.
    pub item_id: Option<&'a str>,
    /// Product text.
    pub item_name: Option<&'a str>,
    /// Finest category.
    pub category: Option<&'a str>,
    /// Units; negative for returned units.
    pub quantity: i64,
    /// Price per unit.
    pub unit_price: Option<f64>,
    /// Order time, epoch milliseconds.
    pub ts: Option<i64>,
    /// The line belongs to a return or cancellation.
    pub is_return: bool,
}

/// Item attributes, indexed by [`ItemIx`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// External item ids.
    pub ids: Vec<String>,
    /// Product names (first non-empty seen).
    pub names: Vec<Option<String>>,
    /// Categories (first non-empty seen).
    pub categories: Vec<Option<String>>,
    /// Median-free running mean unit price; `NaN` when unknown.
    pub prices: Vec<f32>,
    /// Sum and count of the usable unit prices behind `prices` (empty when not kept), so that
    /// the catalogs of two logs merge into the union's ([`crate::tally::Tally::merge`]).
    pub price_sums: Vec<(f64, u32)>,
}

impl Catalog {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when the catalog has no item.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One order collapsed to its distinct items.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// External order id.
    pub id: String,
    /// The customer of the order's first line.
    pub customer: Option<CustomerIx>,
    /// Earliest line time, epoch ms.
    pub ts: Option<i64>,
    /// Distinct items, in order of first appearance.
    pub items: Vec<ItemIx>,
}

/// A return signal: one return line (or negative-quantity line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReturnLine {
    /// Who returned, if known.
    pub customer: Option<CustomerIx>,
    /// What was returned.
    pub item: ItemIx,
    /// Time of the return, epoch ms.
    pub ts: Option<i64>,
}

/// The cleaned log: orders of purchases, return signals, and the interned ids.
#[derive(Debug, Clone, Default)]
pub struct OrderLog {
    /// Items seen on any line.
    pub catalog: Catalog,
    /// External customer ids, indexed by [`CustomerIx`].
    pub customers: Vec<String>,
    /// Purchase orders (at least one clean line each).
    pub orders: Vec<Order>,
    /// Return signals.
    pub returns: Vec<ReturnLine>,
    /// Raw lines seen, before cleaning.
    pub lines_read: u64,
    /// Lines dropped for lacking an order or item id.
    pub lines_dropped: u64,
    /// True when at least one line carried a timestamp.
    pub has_time: bool,
}

impl OrderLog {
    /// Number of purchase lines kept (distinct items per order, summed).
    pub fn n_purchase_items(&self) -> usize {
        self.orders.iter().map(|o| o.items.len()).sum()
    }
}

/// Builds an [`OrderLog`] line by line (protocol steps 1 and 2).
#[derive(Debug, Default)]
pub struct LogBuilder {
    log: OrderLog,
    item_ix: HashMap<String, ItemIx>,
    customer_ix: HashMap<String, CustomerIx>,
    order_ix: HashMap<String, usize>,
    price_sum: Vec<(f64, u32)>,
}

impl LogBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn intern_item(&mut self, line: &LogLine<'_>, id: &str) -> ItemIx {
        if let Some(&ix) = self.item_ix.get(id) {
            let ix_us = ix as usize;
            if self.log.catalog.names[ix_us].is_none() {
                self.log.catalog.names[ix_us] = nonempty(line.item_name);
            }
            if self.log.catalog.categories[ix_us].is_none() {
                self.log.catalog.categories[ix_us] = nonempty(line.category);
            }
            return ix;
        }
        let ix = self.log.catalog.ids.len() as ItemIx;
        self.item_ix.insert(id.to_owned(), ix);
        self.log.catalog.ids.push(id.to_owned());
        self.log.catalog.names.push(nonempty(line.item_name));
        self.log.catalog.categories.push(nonempty(line.category));
        self.price_sum.push((0.0, 0));
        ix
    }

    fn intern_customer(&mut self, id: Option<&str>) -> Option<CustomerIx> {
        let id = id.filter(|s| !s.is_empty())?;
        if let Some(&ix) = self.customer_ix.get(id) {
            return Some(ix);
        }
        let ix = self.log.customers.len() as CustomerIx;
        self.customer_ix.insert(id.to_owned(), ix);
        self.log.customers.push(id.to_owned());
        Some(ix)
    }

    /// Adds one raw line.
    pub fn push(&mut self, line: LogLine<'_>) {
        self.log.lines_read += 1;
        let (Some(order_id), Some(item_id)) = (line.order_id.filter(|s| !s.is_empty()), line.item_id.filter(|s| !s.is_empty())) else {
            self.log.lines_dropped += 1;
            return;
        };
        self.log.has_time |= line.ts.is_some();
        let item = self.intern_item(&line, item_id);
        let customer = self.intern_customer(line.customer_id);
        if line.is_return || line.quantity < 0 {
            self.log.returns.push(ReturnLine { customer, item, ts: line.ts });
            return;
        }
        if let Some(p) = line.unit_price.filter(|p| p.is_finite() && *p > 0.0) {
            let e = &mut self.price_sum[item as usize];
            e.0 += p;
            e.1 += 1;
        }
        match self.order_ix.get(order_id) {
            Some(&o) => {
                let order = &mut self.log.orders[o];
                if !order.items.contains(&item) {
                    order.items.push(item);
                }
                order.ts = match (order.ts, line.ts) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => {
                self.order_ix.insert(order_id.to_owned(), self.log.orders.len());
                self.log.orders.push(Order { id: order_id.to_owned(), customer, ts: line.ts, items: vec![item] });
            }
        }
    }

    /// Finishes the log; fails when no purchase is left.
    pub fn finish(mut self) -> Result<OrderLog> {
        if self.log.orders.is_empty() {
            return Err(Error::EmptyLog);
        }
        self.log.catalog.prices = self.price_sum.iter().map(|&(s, n)| if n > 0 { (s / n as f64) as f32 } else { f32::NAN }).collect();
        self.log.catalog.price_sums = self.price_sum;
        Ok(self.log)
    }
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

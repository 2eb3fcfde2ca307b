//! Candidate generation: the first stage of ranking.
//!
//! A request is ranked in two stages. This module gathers a bounded candidate set from sparse
//! sources, each a short list read from the model's tables around the basket and the customer
//! (EASE rows, co-purchase rows, embedding neighbour lists, the customer's history, popularity);
//! the model then computes features and scores for those candidates only
//! ([`crate::CrossSellModel::rank`]). Nothing here allocates or loops over the whole catalog per
//! request: a per-thread [`Scratch`] of generation-stamped marks, sized to the largest catalog
//! seen, is reused across requests.

use std::cell::RefCell;

use ndarray::{Array2, ArrayView2, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::names::NameProfile;
use crate::{Csr, ItemIx};

/// The candidate sources, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// EASE rows of the basket items (and of the EASE pairs it holds whole, and of the
    /// customer's past items), plus EASE's intercept.
    Ease = 0,
    /// Co-purchase counts of the basket items: Σ P(j | i).
    Cooccurrence = 1,
    /// Embedding neighbours of the basket items: input(i) · output(j) ("bought with").
    Embedding = 2,
    /// Embedding look-alikes of the basket items: cosine of the input vectors.
    Similar = 3,
    /// Items whose names share words with the basket's (TF-IDF).
    Names = 4,
    /// The customer's own past items.
    History = 5,
    /// Recent popularity (the fallback for cold baskets and unknown customers).
    Popular = 6,
}

/// Every source, in turn order.
pub const SOURCES: [Source; 7] =
    [Source::Ease, Source::Cooccurrence, Source::Embedding, Source::Similar, Source::Names, Source::History, Source::Popular];

impl Source {
    /// The name reported.
    pub fn name(self) -> &'static str {
        match self {
            Source::Ease => "ease",
            Source::Cooccurrence => "co-occurrence",
            Source::Embedding => "embedding",
            Source::Similar => "similar",
            Source::Names => "names",
            Source::History => "history",
            Source::Popular => "popular",
        }
    }

    /// This source's bit in [`Candidates::sources`].
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The sources whose scores come from the rows a request reads ([`Touched`]): `Ease`,
/// `Cooccurrence`, `Embedding`, `Similar` and `Names`, the first five of [`Source`].
pub(crate) const ROW_SOURCES: usize = 5;

/// Retrieval settings of a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retrieval {
    /// Most candidates scored per request (a request's allow-list is scored whole instead).
    pub budget: usize,
}

/// Default [`Retrieval::budget`].
pub const DEFAULT_BUDGET: usize = 1000;

impl Default for Retrieval {
    fn default() -> Self {
        Retrieval { budget: DEFAULT_BUDGET }
    }
}

impl Retrieval {
    /// Checks the settings.
    pub fn validate(&self) -> crate::Result<()> {
        if self.budget == 0 {
            return Err(crate::Error::Invalid { what: "candidate budget", reason: "must be at least 1".into() });
        }
        Ok(())
    }
}

/// Per item, its nearest items by the learned embeddings (computed once at training time and
/// stored in the bundle): the sparse lists the embedding sources read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Neighbours {
    /// `comp[i]`: the items `j` with the largest input(i) · output(j).
    pub comp: Csr,
    /// `similar[i]`: the items `j` with the largest cosine of input(i) and input(j).
    pub similar: Csr,
}

impl Neighbours {
    /// Whether there is no list (a bundle from before they were stored).
    pub fn is_empty(&self) -> bool {
        self.comp.n_rows() == 0 && self.similar.n_rows() == 0
    }

    /// Exact top-`per_item` neighbour lists of every item, among the `targets` most-bought items
    /// (`orders`: training orders per item), in blocks of rows in parallel: time items ×
    /// min(items, targets) × dim, memory one block of scores.
    pub fn compute(emb_in: &Array2<f32>, emb_out: &Array2<f32>, orders: &[f32], per_item: usize, targets: usize) -> Self {
        const BLOCK: usize = 256;
        let n = emb_in.nrows();
        let mut target: Vec<usize> = (0..n).collect();
        if targets < n {
            target.select_nth_unstable_by(targets, |&a, &b| orders[b].total_cmp(&orders[a]).then(a.cmp(&b)));
            target.truncate(targets);
            target.sort_unstable();
        }
        let unit = unit_rows(emb_in);
        let out_t = emb_out.select(Axis(0), &target);
        let unit_t = unit.select(Axis(0), &target);
        let blocks: Vec<(Vec<Row>, Vec<Row>)> = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let rows = b * BLOCK..((b + 1) * BLOCK).min(n);
                let comp = emb_in.slice(s![rows.clone(), ..]).dot(&out_t.t());
                let sim = unit.slice(s![rows.clone(), ..]).dot(&unit_t.t());
                (top_rows(comp.view(), rows.start, &target, per_item), top_rows(sim.view(), rows.start, &target, per_item))
            })
            .collect();
        let (comp, similar): (Vec<_>, Vec<_>) = blocks.into_iter().unzip();
        Neighbours { comp: Csr::from_rows(comp.into_iter().flatten()), similar: Csr::from_rows(similar.into_iter().flatten()) }
    }

    /// Checks the lists against the catalog size.
    pub fn validate(&self, n: usize) -> Result<(), String> {
        self.comp.validate(n, n).map_err(|e| format!("embedding neighbours: {e}"))?;
        self.similar.validate(n, n).map_err(|e| format!("embedding look-alikes: {e}"))
    }
}

/// One neighbour list: `(item, score)`.
type Row = Vec<(u32, f32)>;

/// Rows scaled to unit length.
pub(crate) fn unit_rows(m: &Array2<f32>) -> Array2<f32> {
    let mut u = m.clone();
    for mut row in u.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt().max(1e-12);
        row.mapv_inplace(|v| v / norm);
    }
    u
}

/// Per row of a score block (row `r` is item `first + r`): its `k` best columns, mapped
/// through `target`, the item itself left out.
fn top_rows(scores: ArrayView2<'_, f32>, first: usize, target: &[usize], k: usize) -> Vec<Row> {
    // one buffer for a row's scores; each list keeps only its own `k` entries
    let mut buf: Vec<(u32, f32)> = Vec::with_capacity(target.len());
    scores
        .outer_iter()
        .enumerate()
        .map(|(r, row)| {
            let me = first + r;
            buf.clear();
            buf.extend(row.iter().zip(target).filter(|&(_, &j)| j != me).map(|(&v, &j)| (j as u32, v)));
            truncate_best(&mut buf, k);
            buf.to_vec()
        })
        .collect()
}

/// A key whose ascending order is [`truncate_best`]'s: higher value first (by
/// `f32::total_cmp`), ties by the lower item; both come back out of it ([`from_best_first_key`]).
/// Sorting plain integers is several times faster than sorting pairs with that comparator.
fn best_first_key(j: u32, v: f32) -> u64 {
    (u64::from(!total_order_bits(v)) << 32) | u64::from(j)
}

/// The item and value of a [`best_first_key`].
fn from_best_first_key(key: u64) -> (u32, f32) {
    let ordered = !((key >> 32) as u32);
    (key as u32, f32::from_bits(flip_negatives((ordered ^ 0x8000_0000) as i32) as u32))
}

/// `v`'s bits as an unsigned number in `f32::total_cmp`'s order.
fn total_order_bits(v: f32) -> u32 {
    (flip_negatives(v.to_bits() as i32) as u32) ^ 0x8000_0000
}

/// Flips the magnitude bits of a negative number (its own inverse), as `f32::total_cmp` does.
fn flip_negatives(bits: i32) -> i32 {
    bits ^ ((((bits >> 31) as u32) >> 1) as i32)
}

/// Keeps the `k` highest-valued entries (ties: the lower item first), best first.
pub(crate) fn truncate_best(v: &mut Vec<(u32, f32)>, k: usize) {
    let mut keys: Vec<u64> = v.iter().map(|&(j, x)| best_first_key(j, x)).collect();
    if keys.len() > k {
        if k > 0 {
            keys.select_nth_unstable(k - 1);
        }
        keys.truncate(k);
    }
    keys.sort_unstable();
    v.clear();
    v.extend(keys.iter().map(|&key| from_best_first_key(key)));
}

/// A set of item marks that is cleared in O(1): a mark counts only when its stamp is the
/// current generation. Grows to the largest catalog it is used with, never shrinks. A mark's
/// stamp and value sit side by side, so a lookup reads one cache line.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Per item: (stamp, value).
    slots: Vec<(u32, u32)>,
    generation: u32,
}

impl Marks {
    /// Clears every mark, for items `0..n`.
    pub(crate) fn begin(&mut self, n: usize) {
        if self.slots.len() < n {
            self.slots.resize(n, (0, 0));
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.fill((0, 0));
            self.generation = 1;
        }
    }

    /// The value marked on `j`, if it is marked.
    pub(crate) fn get(&self, j: ItemIx) -> Option<u32> {
        let (stamp, value) = self.slots[j as usize];
        (stamp == self.generation).then_some(value)
    }

    /// Whether `j` is marked.
    pub(crate) fn contains(&self, j: ItemIx) -> bool {
        self.slots[j as usize].0 == self.generation
    }

    /// Marks `j` with `v`.
    pub(crate) fn set(&mut self, j: ItemIx, v: u32) {
        self.slots[j as usize] = (self.generation, v);
    }
}

/// What the rows a request reads (its basket items' and its customer's) say about one item they
/// touch: the sums and maxima both the candidate sources and the features use, gathered in one
/// pass over the rows.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Partial {
    /// Max over basket items `i` of P(j | i).
    pub(crate) cooc_max: f32,
    /// Mean over basket items of P(j | i).
    pub(crate) cooc_mean: f32,
    /// Max over basket items of the Jaccard index.
    pub(crate) jaccard_max: f32,
    /// Mean over basket items of the Jaccard index.
    pub(crate) jaccard_mean: f32,
    /// EASE weights of the basket rows and of the pairs the basket holds whole.
    pub(crate) ease: f32,
    /// Σ over the customer's past items of their order share × EASE weight.
    pub(crate) ease_history: f32,
    /// Mean over the basket of the embedding-neighbour score (a source only).
    pub(crate) comp: f32,
    /// Max over the basket of the look-alike cosine (a source only).
    pub(crate) similar: f32,
    /// The name look-alike score (a source only).
    pub(crate) names: f32,
    /// Bits ([`Source::bit`]) of the sources whose rows touched the item.
    pub(crate) sources: u8,
}

/// The items a request's rows touch, each with its [`Partial`].
#[derive(Debug, Default)]
pub(crate) struct Touched {
    marks: Marks,
    pub(crate) items: Vec<(ItemIx, Partial)>,
    /// The basket's names together (what the name source and features read).
    pub(crate) names: NameProfile,
}

impl Touched {
    /// Forgets every item, for items `0..n`.
    pub(crate) fn begin(&mut self, n: usize) {
        self.marks.begin(n);
        self.items.clear();
    }

    /// `j`'s partial, marked as touched by `source`, and whether `source` touches it first now.
    pub(crate) fn at(&mut self, j: ItemIx, source: Source) -> (&mut Partial, bool) {
        let k = match self.marks.get(j) {
            Some(k) => k as usize,
            None => {
                self.marks.set(j, self.items.len() as u32);
                self.items.push((j, Partial::default()));
                self.items.len() - 1
            }
        };
        let p = &mut self.items[k].1;
        let first = p.sources & source.bit() == 0;
        p.sources |= source.bit();
        (p, first)
    }

    /// `j`'s partial, if a row touched it.
    pub(crate) fn get(&self, j: ItemIx) -> Option<&Partial> {
        self.marks.get(j).map(|k| &self.items[k as usize].1)
    }

    /// Whether `source` touched `j`.
    pub(crate) fn touched_by(&self, j: ItemIx, source: Source) -> bool {
        self.get(j).is_some_and(|p| p.sources & source.bit() != 0)
    }

    /// In one pass over the touched items: collects into list `k` the `budget` best (as
    /// [`truncate_best`] orders them) of the eligible items row source `k` ([`ROW_SOURCES`])
    /// touched, scored by `score(j, partial)[k]`.
    pub(crate) fn fill_lists(
        &self,
        eligible: &dyn Fn(ItemIx) -> bool,
        score: impl Fn(ItemIx, &Partial) -> [f32; ROW_SOURCES],
        budget: usize,
        lists: &mut [Vec<(ItemIx, f32)>],
    ) {
        let lists = &mut lists[..ROW_SOURCES];
        for (j, p) in &self.items {
            if !eligible(*j) {
                continue;
            }
            let scores = score(*j, p);
            for (k, (list, v)) in lists.iter_mut().zip(scores).enumerate() {
                if p.sources & (1 << k) != 0 {
                    list.push((*j, v));
                }
            }
        }
        lists.iter_mut().for_each(|l| truncate_best(l, budget));
    }
}

/// Per-thread buffers of one ranking.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Items that may not be offered (basket, exclude list, past items for discovery).
    pub(crate) excluded: Marks,
    /// Candidates: item → row.
    pub(crate) rows: Marks,
    /// What the request's rows say about the items they touch.
    pub(crate) touched: Touched,
    /// Basket items (for pairs held whole).
    pub(crate) held: Marks,
    /// Each source's list, best first.
    pub(crate) lists: Vec<Vec<(ItemIx, f32)>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if it is in use, e.g. re-entered).
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The candidate set of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// The items, in the order they were gathered.
    pub items: Vec<ItemIx>,
    /// Per item: the bits ([`Source::bit`]) of every source whose taken part of its list
    /// holds the item (0 for an allow-list).
    pub sources: Vec<u8>,
}

/// Merges source lists (each best first, eligible items only) by taking turns, one new item per
/// source per turn, until `budget` items are gathered or every list is used up. `rows` marks
/// each gathered item with its position.
pub(crate) fn merge(lists: &[Vec<(ItemIx, f32)>], budget: usize, rows: &mut Marks, out: &mut Candidates) {
    let mut next = vec![0usize; lists.len()];
    loop {
        let mut progressed = false;
        for (s, list) in lists.iter().enumerate() {
            if out.items.len() >= budget {
                return;
            }
            while let Some(&(j, _)) = list.get(next[s]) {
                next[s] += 1;
                progressed = true;
                match rows.get(j) {
                    Some(r) => out.sources[r as usize] |= SOURCES[s].bit(),
                    None => {
                        rows.set(j, out.items.len() as u32);
                        out.items.push(j);
                        out.sources.push(SOURCES[s].bit());
                        break;
                    }
                }
            }
        }
        if !progressed {
            return;
        }
    }
}

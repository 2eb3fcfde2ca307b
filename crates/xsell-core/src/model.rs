//! The served cross-sell model and its ranking.
//!
//! [`ModelParts`] is the plain data a bundle stores; [`CrossSellModel`] validates it once and adds
//! the lookup tables ranking needs. Ranking has two stages: a bounded candidate set is gathered
//! from sparse sources ([`crate::retrieval`]), then only those candidates get features and scores,
//! with the same code the trainer fits the ranker on ([`CrossSellModel::candidate_features`]), so
//! training, `xsell eval` and the gRPC server cannot drift apart, and no request does work
//! proportional to the catalog.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::Array2;

use crate::features::HistoryCut;
use crate::ids::IdIndex;
use crate::names::NameIndex;
use crate::policy::{CustomerRule, Effective, Objective, Policies, RankPolicy, Scored};
use crate::retrieval::{Candidates, Marks, Neighbours, Retrieval, Scratch, Source, Touched, truncate_best, unit_rows, with_scratch};
use crate::{Csr, CustomerIx, Error, ItemIx, Result};

pub use crate::explain::{Driver, DriverSource, Reason};
pub use crate::features::{FEATURE_GROUPS, FEATURES, N_FEATURES, feature};
pub use crate::policy::{Suppression, Touchpoint, Withheld};
pub use crate::ranker::{Ranker, sigmoid};

/// Item attributes of a model, indexed by [`ItemIx`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemTable {
    /// External ids.
    pub ids: Vec<String>,
    /// Names.
    pub names: Vec<Option<String>>,
    /// Categories.
    pub categories: Vec<Option<String>>,
    /// Mean unit price (`NaN` = unknown).
    pub prices: Vec<f32>,
    /// Training orders containing the item.
    pub orders: Vec<f32>,
    /// Recent training orders containing the item.
    pub recent_orders: Vec<f32>,
    /// Share of sold lines returned.
    pub return_rate: Vec<f32>,
}

/// Customer attributes of a model, indexed by [`CustomerIx`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomerTable {
    /// External ids.
    pub ids: Vec<String>,
    /// Training orders.
    pub orders: Vec<f32>,
    /// Share of purchase lines returned.
    pub return_rate: Vec<f32>,
}

/// Per kind (category or latent category): whether its items are bought together less often
/// than chance, from the stored co-purchase counts (pairs of items sold too rarely to judge do
/// not count).
fn substitute_kinds(p: &ModelParts, category_of: &[Option<u32>], n_categories: usize) -> Vec<bool> {
    let n = f64::from(p.n_orders.max(1.0));
    let (mut together, mut sum, mut sum_sq) = (vec![0f64; n_categories], vec![0f64; n_categories], vec![0f64; n_categories]);
    for (i, c) in category_of.iter().enumerate() {
        if let Some(c) = c {
            let o = f64::from(p.items.orders[i]);
            sum[*c as usize] += o;
            sum_sq[*c as usize] += o * o;
            let (cols, vals) = p.pairs.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                if category_of[j as usize] == Some(*c) {
                    together[*c as usize] += f64::from(v);
                }
            }
        }
    }
    // pairs expected by chance; enough evidence: at least a few across the category
    (0..n_categories)
        .map(|c| {
            let expected = (sum[c] * sum[c] - sum_sq[c]) / n;
            expected >= 5.0 && together[c] < expected
        })
        .collect()
}

/// Higher-order EASE terms: the weights a basket gets from holding *both* items of a pair, on
/// top of the two items' own weights (what the pair predicts beyond its items).
#[derive(Debug, Clone, PartialEq)]
pub struct PairWeights {
    /// The pairs, as item indices `(a, b)` with `a < b`.
    pub pairs: Vec<(ItemIx, ItemIx)>,
    /// `weights[p, j]`: added to item `j`'s EASE score when pair `p` is in the basket.
    pub weights: Csr,
}

/// Per position `a` of `0..n`: `(b, p)` for each pair `p = (a, b)` (each pair listed once, under
/// its first item), so a basket finds the pairs it holds whole from its own items.
pub fn pair_partners(pairs: &[(u32, u32)], n: usize) -> Vec<Vec<(u32, u32)>> {
    let mut partners = vec![Vec::new(); n];
    for (q, &(a, b)) in pairs.iter().enumerate() {
        partners[a as usize].push((b, q as u32));
    }
    partners
}

impl ModelParts {
    /// Checks that the tables agree (lengths, indices in range, finite values, unique item ids,
    /// valid rankers and settings): what [`CrossSellModel::new`] checks before it builds its
    /// indexes, for a caller that only needs the verdict (the trainer's last check) without the
    /// indexes' memory.
    pub fn validate(&self) -> Result<()> {
        let n = self.items.ids.len();
        let nc = self.customers.ids.len();
        let inc = |m: String| Err(Error::Inconsistent(m));
        if n == 0 {
            return inc("the model has no item".into());
        }
        let it = &self.items;
        if [it.names.len(), it.categories.len(), it.prices.len(), it.orders.len(), it.recent_orders.len(), it.return_rate.len()]
            .iter()
            .any(|&l| l != n)
        {
            return inc("item table columns differ in length".into());
        }
        let ct = &self.customers;
        if ct.orders.len() != nc || ct.return_rate.len() != nc || self.customer_lines.len() != nc {
            return inc("customer table columns differ in length".into());
        }
        self.pairs.validate(n, n).map_err(|e| Error::Inconsistent(format!("pairs: {e}")))?;
        self.history.validate(nc, n).map_err(|e| Error::Inconsistent(format!("history: {e}")))?;
        self.since.validate(nc, n).map_err(|e| Error::Inconsistent(format!("since: {e}")))?;
        if self.since.indptr != self.history.indptr || self.since.indices != self.history.indices {
            return inc("since and history must hold the same customer-item pairs".into());
        }
        self.ease.validate(n, n).map_err(|e| Error::Inconsistent(format!("ease: {e}")))?;
        let ep = &self.ease_pairs;
        ep.weights.validate(ep.pairs.len(), n).map_err(|e| Error::Inconsistent(format!("ease pair weights: {e}")))?;
        if let Some((q, (a, b))) = ep.pairs.iter().enumerate().find(|(_, (a, b))| a >= b || *b as usize >= n) {
            return inc(format!("ease pair {q} is ({a}, {b}): expected two item indices a < b < {n}"));
        }
        if !self.ease_always_on.is_empty() && self.ease_always_on.len() != n {
            return inc(format!("ease intercept has {} values for {n} items", self.ease_always_on.len()));
        }
        if self.ease_always_on.iter().any(|v| !v.is_finite()) {
            return inc("an ease intercept value is not finite".into());
        }
        if self.emb_in.nrows() != n || self.emb_out.dim() != self.emb_in.dim() {
            return inc(format!("embeddings have shape {:?}/{:?}, expected {n} rows", self.emb_in.dim(), self.emb_out.dim()));
        }
        if self.emb_in.iter().chain(self.emb_out.iter()).any(|v| !v.is_finite()) {
            return inc("an embedding value is not finite".into());
        }
        self.ranker.validate()?;
        if let Some(r) = &self.discovery_ranker {
            r.validate()?;
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        if let Some(id) = it.ids.iter().find(|id| !seen.insert(id.as_str())) {
            return inc(format!("item id {id:?} appears twice"));
        }
        if it.categories.iter().all(Option::is_none) && !self.latent_categories.is_empty() {
            if self.latent_categories.len() != n {
                return inc(format!("latent categories has {} values for {n} items", self.latent_categories.len()));
            }
            if let Some(c) = self.latent_categories.iter().find(|&&c| c as usize >= n) {
                return inc(format!("latent category {c} is not below the item count {n}"));
            }
        }
        self.retrieval.validate()?;
        if !self.neighbours.is_empty() {
            self.neighbours.validate(n).map_err(Error::Inconsistent)?;
        }
        Ok(())
    }
}

impl Default for PairWeights {
    /// No pair.
    fn default() -> Self {
        PairWeights { pairs: Vec::new(), weights: Csr::from_rows(Vec::new()) }
    }
}

/// Everything a model bundle stores.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParts {
    /// Items.
    pub items: ItemTable,
    /// Customers.
    pub customers: CustomerTable,
    /// Purchase lines per customer (for return rates).
    pub customer_lines: Vec<f32>,
    /// `pairs[i, j]`: training orders with both items.
    pub pairs: Csr,
    /// `history[c, i]`: training orders of customer `c` with item `i` (shared with the training
    /// counts when they are in the model's index space: at a million customers it is the largest
    /// table).
    pub history: Arc<Csr>,
    /// `since[c, i]`: orders of customer `c` after their last one with item `i` (shared as
    /// `history`).
    pub since: Arc<Csr>,
    /// `ease[i, j]`: the EASE item-item weight (the strongest entries of each row).
    pub ease: Csr,
    /// Higher-order EASE: weights that apply when both items of a pair are in the basket.
    pub ease_pairs: PairWeights,
    /// EASE's intercept: per item, the weight of the always-on input, added to every
    /// basket's EASE score (empty: none, as in bundles before format 4).
    pub ease_always_on: Vec<f32>,
    /// Input ("context") item embeddings, items × dim.
    pub emb_in: Array2<f32>,
    /// Output ("target") item embeddings, items × dim.
    pub emb_out: Array2<f32>,
    /// Training orders.
    pub n_orders: f32,
    /// Recent training orders (the newest part, for trends).
    pub n_recent: f32,
    /// The ranker.
    pub ranker: Ranker,
    /// A ranker for discovery requests (`new_to_customer` with a known customer), fitted on
    /// queries whose target was new to the customer; `None`: `ranker` serves them too.
    pub discovery_ranker: Option<Ranker>,
    /// Embedding neighbour lists (empty: computed when the model is built, as for bundles
    /// from before they were stored).
    pub neighbours: Neighbours,
    /// Candidate generation settings.
    pub retrieval: Retrieval,
    /// Per item, its latent category: a cluster of the input embeddings (k-means at training
    /// time), the "kind" of an item in catalogs without categories. Empty: none.
    pub latent_categories: Vec<u32>,
    /// Whether substitutes are judged within latent categories: the trainer's validation
    /// found that customers seldom add the items this judges substitutes.
    pub latent_substitutes: bool,
}

/// Neighbours kept per item and list when they are computed at load time.
pub const LOAD_TIME_NEIGHBOURS: usize = 50;
/// ... among at most this many most-bought items.
pub const LOAD_TIME_NEIGHBOUR_TARGETS: usize = 20_000;

/// Request limits, checked by [`RankQuery::validate`].
pub mod limits {
    /// Largest `k`.
    pub const MAX_K: usize = 1000;
    /// Most basket items.
    pub const MAX_BASKET: usize = 2000;
    /// Most ids in the exclude, allow and category lists.
    pub const MAX_LIST: usize = 10_000;
    /// Longest id.
    pub const MAX_ID_LEN: usize = 256;
}

/// One ranking request, in external ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankQuery {
    /// Customer, if known to the caller.
    pub customer_id: Option<String>,
    /// Items in the current basket.
    pub basket: Vec<String>,
    /// How many offers at most.
    pub k: usize,
    /// Where the offers appear.
    pub touchpoint: Touchpoint,
    /// Items never to offer.
    pub exclude: Vec<String>,
    /// When non-empty, only these items may be offered.
    pub allow: Vec<String>,
    /// When non-empty, only items of these categories may be offered.
    pub categories: Vec<String>,
    /// Offers below this calibrated probability are dropped (so the answer can be empty).
    pub min_probability: f32,
    /// At most this many offers per category (0 = no cap).
    pub max_per_category: usize,
    /// Keep substitutes of basket items (same category, bought together less than chance).
    pub allow_substitutes: bool,
    /// Offer only items the customer has not bought before (discovery); no effect for an
    /// unknown or anonymous customer.
    pub new_to_customer: bool,
    /// What to order offers by (`None`: the touchpoint policy's objective).
    pub objective: Option<Objective>,
    /// Fill each offer's drivers (one more feature pass over the offers per basket item).
    pub explain: bool,
}

impl RankQuery {
    /// Checks the request against [`limits`].
    pub fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(Error::Invalid { what, reason });
        if self.k == 0 || self.k > limits::MAX_K {
            return bad("k", format!("must be between 1 and {}, got {}", limits::MAX_K, self.k));
        }
        if self.basket.len() > limits::MAX_BASKET {
            return bad("basket", format!("has {} items, at most {} are accepted", self.basket.len(), limits::MAX_BASKET));
        }
        if let Some(c) = &self.customer_id {
            check_id("customer_id", c)?;
        }
        for (what, list) in
            [("basket", &self.basket), ("exclude", &self.exclude), ("candidates", &self.allow), ("categories", &self.categories)]
        {
            if list.len() > limits::MAX_LIST {
                return bad(what, format!("has {} entries, at most {} are accepted", list.len(), limits::MAX_LIST));
            }
            for id in list {
                check_id(what, id)?;
            }
        }
        if !(0.0..=1.0).contains(&self.min_probability) {
            return bad("min_probability", format!("must be within [0, 1], got {}", self.min_probability));
        }
        Ok(())
    }
}

fn check_id(what: &'static str, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::Invalid { what, reason: "an id is empty".into() });
    }
    if id.len() > limits::MAX_ID_LEN {
        return Err(Error::Invalid {
            what,
            reason: format!("an id is {} bytes long, at most {} are accepted", id.len(), limits::MAX_ID_LEN),
        });
    }
    Ok(())
}

/// One offer.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedItem {
    /// The item.
    pub item: ItemIx,
    /// Ranker score (higher is better).
    pub score: f32,
    /// Calibrated probability that the customer adds the item to this basket.
    pub probability: f32,
    /// Why it is offered.
    pub reason: Reason,
    /// What raised its score most (filled when the request asks to explain).
    pub drivers: Vec<Driver>,
}

/// The answer to a [`RankQuery`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ranking {
    /// Offers, best first.
    pub items: Vec<RankedItem>,
    /// The customer id was given and is known to the model.
    pub customer_known: bool,
    /// Basket items the model has never seen.
    pub unknown_items: Vec<String>,
    /// Set when every offer was withheld on purpose, with the reason.
    pub suppressed: Option<Suppression>,
    /// The policy rules that withheld some offers, with how many each.
    pub withheld: Vec<Withheld>,
}

/// A validated model, ready to rank.
#[derive(Debug, Clone)]
pub struct CrossSellModel {
    pub(crate) parts: ModelParts,
    item_index: IdIndex,
    customer_index: IdIndex,
    pub(crate) category_of: Vec<Option<u32>>,
    category_index: HashMap<String, u32>,
    /// Per item, its kind: the catalog category when the catalog has categories, else the
    /// latent category (substitutes and the per-category cap are judged within a kind).
    kind_of: Vec<Option<u32>>,
    /// Per kind: are two of its items bought together less often than chance?
    substitute_kind: Vec<bool>,
    /// Per item `a`: `(b, p)` for each EASE pair `p = (a, b)`.
    pub(crate) pair_partners: Vec<Vec<(ItemIx, u32)>>,
    pub(crate) emb_in_unit: Array2<f32>,
    pub(crate) names: NameIndex,
    /// Per customer: which past items' EASE rows a request reads.
    pub(crate) history_cuts: Vec<HistoryCut>,
    /// `parts.ease` with each row's entries strongest first (by |weight|, ties by column), so a
    /// large basket reads a bounded prefix of each of its rows ([`BASKET_EASE_ENTRIES`]).
    pub(crate) ease_strongest: Csr,
    /// Items by recent popularity, then popularity (the popular source walks it).
    popular_order: Vec<ItemIx>,
    /// Items by EASE intercept (empty without one).
    prior_order: Vec<ItemIx>,
    /// Per category: its items by popularity (the popular source under a category filter).
    category_items: Vec<Vec<ItemIx>>,
    /// The median known price (1 without prices): the price of an item without one in
    /// expected-value objectives.
    pub(crate) median_price: f32,
}

/// The policies [`CrossSellModel::rank`] applies: the built-in defaults.
static DEFAULT_POLICIES: std::sync::LazyLock<Policies> = std::sync::LazyLock::new(Policies::default);

/// A request resolved against the model: who, what is in the basket, what may be offered.
struct Resolved {
    customer: Option<CustomerIx>,
    basket: Vec<ItemIx>,
    unknown_items: Vec<String>,
    rule: CustomerRule,
}

/// Items sold at least this many times (expected pair count by chance) can be judged
/// substitutes outside substitute categories.
const SUBSTITUTE_MIN_EXPECTED: f32 = 1.0;

/// A same-kind item pricier than this multiple of a basket item is judged an upsell unless the
/// pair is clearly bought together (see [`CrossSellModel::judged_substitute`]).
pub const UPSELL_PRICE_RATIO: f32 = 1.25;

/// Most past items of a customer whose EASE rows a request reads (their most bought).
pub const HISTORY_EASE_ITEMS: usize = 50;

/// EASE entries a request reads from its basket items' rows together: with `b` basket items,
/// each row's strongest `BASKET_EASE_ENTRIES / b` (rows are whole up to 40 items at the
/// default 200 entries a row), so a large basket costs a bounded number of touches.
pub const BASKET_EASE_ENTRIES: usize = 8192;

/// `m` with each row's entries ordered strongest first: |value| descending, ties by column.
pub(crate) fn strongest_first(m: &Csr) -> Csr {
    let mut out = m.clone();
    let mut row: Vec<(u32, f32)> = Vec::new();
    for r in 0..m.n_rows() {
        let (a, b) = (m.indptr[r] as usize, m.indptr[r + 1] as usize);
        row.clear();
        row.extend(m.indices[a..b].iter().copied().zip(m.values[a..b].iter().copied()));
        row.sort_unstable_by(|x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
        for (k, (c, v)) in row.iter().enumerate() {
            out.indices[a + k] = *c;
            out.values[a + k] = *v;
        }
    }
    out
}

/// Source-list entries read per basket item, for [`CrossSellModel::request_work`].
const ROW_WORK: u64 = 1024;

impl CrossSellModel {
    /// Validates the parts and builds the lookup tables.
    pub fn new(parts: ModelParts) -> Result<Self> {
        parts.validate()?;
        let n = parts.items.ids.len();
        let it = &parts.items;
        let ct = &parts.customers;
        let pair_partners = pair_partners(&parts.ease_pairs.pairs, n);
        // the largest lookup tables are independent: built side by side (a 1M-item load)
        let ((item_index, customer_index), (names, (history_cuts, ease_strongest))) = rayon::join(
            || rayon::join(|| IdIndex::new(&it.ids), || IdIndex::new(&ct.ids)),
            || {
                rayon::join(
                    || NameIndex::new(&it.names),
                    || rayon::join(|| HistoryCut::of_rows(&parts.history), || strongest_first(&parts.ease)),
                )
            },
        );
        let mut category_index = HashMap::new();
        let category_of: Vec<Option<u32>> = it
            .categories
            .iter()
            .map(|c| {
                c.as_ref().map(|c| {
                    let next = category_index.len() as u32;
                    *category_index.entry(c.clone()).or_insert(next)
                })
            })
            .collect();
        let emb_in_unit = unit_rows(&parts.emb_in);
        let kind_of: Vec<Option<u32>> = if category_index.is_empty() && !parts.latent_categories.is_empty() {
            parts.latent_categories.iter().map(|&c| Some(c)).collect()
        } else {
            category_of.clone()
        };
        let n_kinds = kind_of.iter().flatten().map(|&c| c as usize + 1).max().unwrap_or(0);
        // a latent category is a cluster of contexts, not a kind the catalog declares: its
        // pairs are judged one by one (see is_substitute)
        let substitute_kind = if category_index.is_empty() { vec![false; n_kinds] } else { substitute_kinds(&parts, &kind_of, n_kinds) };
        let mut parts = parts;
        // stored lists were checked by `validate`; lists computed here are checked once too
        if parts.neighbours.is_empty() {
            parts.neighbours =
                Neighbours::compute(&parts.emb_in, &parts.emb_out, &parts.items.orders, LOAD_TIME_NEIGHBOURS, LOAD_TIME_NEIGHBOUR_TARGETS);
            parts.neighbours.validate(n).map_err(Error::Inconsistent)?;
        }
        let it = &parts.items;
        let by = |key: &dyn Fn(usize) -> (f32, f32)| {
            let mut v: Vec<ItemIx> = (0..n as ItemIx).collect();
            v.sort_unstable_by(|&a, &b| {
                let (ka, kb) = (key(a as usize), key(b as usize));
                kb.0.total_cmp(&ka.0).then(kb.1.total_cmp(&ka.1)).then(a.cmp(&b))
            });
            v
        };
        let popular_order = by(&|j| (it.recent_orders[j], it.orders[j]));
        let prior_order = if parts.ease_always_on.is_empty() { Vec::new() } else { by(&|j| (parts.ease_always_on[j], it.orders[j])) };
        let mut known: Vec<f32> = it.prices.iter().copied().filter(|v| v.is_finite() && *v > 0.0).collect();
        let median_price = if known.is_empty() {
            1.0
        } else {
            let mid = known.len() / 2;
            *known.select_nth_unstable_by(mid, f32::total_cmp).1
        };
        let mut category_items = vec![Vec::new(); category_index.len()];
        for &j in &by(&|j| (it.orders[j], 0.0)) {
            if let Some(c) = category_of[j as usize] {
                category_items[c as usize].push(j);
            }
        }
        Ok(CrossSellModel {
            parts,
            item_index,
            customer_index,
            category_of,
            category_index,
            kind_of,
            substitute_kind,
            pair_partners,
            emb_in_unit,
            names,
            history_cuts,
            ease_strongest,
            popular_order,
            prior_order,
            category_items,
            median_price,
        })
    }

    /// The stored parts.
    pub fn parts(&self) -> &ModelParts {
        &self.parts
    }

    /// The stored parts, by value (the lookup tables are dropped).
    pub fn into_parts(self) -> ModelParts {
        self.parts
    }

    /// Number of catalog items.
    pub fn n_items(&self) -> usize {
        self.parts.items.ids.len()
    }

    /// Index of an external item id.
    pub fn item(&self, id: &str) -> Option<ItemIx> {
        self.item_index.get(&self.parts.items.ids, id)
    }

    /// Index of an external customer id.
    pub fn customer(&self, id: &str) -> Option<CustomerIx> {
        self.customer_index.get(&self.parts.customers.ids, id)
    }

    /// The candidate budget in use.
    pub fn budget(&self) -> usize {
        self.parts.retrieval.budget
    }

    /// Sets the candidate budget (for measuring the recall/latency trade-off).
    pub fn set_budget(&mut self, budget: usize) -> Result<()> {
        let r = Retrieval { budget };
        r.validate()?;
        self.parts.retrieval = r;
        Ok(())
    }

    /// Work units of a request with `basket` items and an allow-list of `allow` items (0: none):
    /// the candidates × (basket + features) matrix ranking fills, plus the source lists read per
    /// basket item. Bounded by the budget, not by the catalog.
    pub fn request_work(&self, basket: usize, allow: usize) -> u64 {
        let m = if allow > 0 { allow } else { self.budget() }.min(self.n_items()) as u64;
        m * (basket as u64 + N_FEATURES as u64) + basket as u64 * ROW_WORK
    }

    /// The candidate set a request would be ranked over, with the sources that brought each
    /// item (what `xsell eval` reports as candidate recall).
    pub fn candidates(&self, q: &RankQuery) -> Result<Candidates> {
        let policy = DEFAULT_POLICIES.get(q.touchpoint);
        with_scratch(|s| Ok(self.resolve_and_gather(q, policy, s)?.1))
    }

    /// Checks the request, resolves its ids, and gathers its candidates (into `s.rows`) under
    /// the policy's customer rule and price ceiling.
    fn resolve_and_gather(&self, q: &RankQuery, policy: &RankPolicy, s: &mut Scratch) -> Result<(Resolved, Candidates)> {
        q.validate()?;
        let p = &self.parts;
        let customer = q.customer_id.as_deref().and_then(|c| self.customer(c));
        let mut basket = Vec::with_capacity(q.basket.len());
        let mut unknown_items = Vec::new();
        for id in &q.basket {
            match self.item(id) {
                Some(i) if !basket.contains(&i) => basket.push(i),
                Some(_) => {}
                None => unknown_items.push(id.clone()),
            }
        }
        let rule = self.customer_rule(policy, customer);
        let resolved = Resolved { customer, basket, unknown_items, rule };
        if rule == CustomerRule::Suppress {
            return Ok((resolved, Candidates::default()));
        }
        let n = self.n_items();
        let Scratch { excluded, rows, touched, held, lists } = s;
        excluded.begin(n);
        let mut n_excluded = 0;
        let mut exclude = |j: ItemIx| {
            if !excluded.contains(j) {
                excluded.set(j, 0);
                n_excluded += 1;
            }
        };
        resolved.basket.iter().for_each(|&i| exclude(i));
        q.exclude.iter().filter_map(|id| self.item(id)).for_each(&mut exclude);
        if q.new_to_customer
            && let Some(c) = customer
        {
            p.history.row(c as usize).0.iter().for_each(|&i| exclude(i));
        }
        let wanted: Vec<u32> = q.categories.iter().filter_map(|c| self.category_index.get(c).copied()).collect();
        let max_price = self.price_ceiling(policy, &resolved.basket);
        let eligible = |j: ItemIx| {
            !excluded.contains(j)
                && (q.categories.is_empty() || self.category_of[j as usize].is_some_and(|c| wanted.contains(&c)))
                // unknown prices pass
                && (max_price.is_nan() || p.items.prices[j as usize].partial_cmp(&max_price) != Some(std::cmp::Ordering::Greater))
        };
        let allow: Vec<ItemIx> = q.allow.iter().filter_map(|id| self.item(id)).collect();
        if !q.allow.is_empty() && allow.is_empty() {
            rows.begin(n);
            return Ok((resolved, Candidates::default())); // none of the allowed items is known
        }
        let c = self.gather(customer, &resolved.basket, &allow, &wanted, &eligible, self.budget(), n_excluded, touched, held, rows, lists);
        Ok((resolved, c))
    }

    /// Gathers candidates: the `allow` items when there are some, else the sources' lists merged
    /// up to `budget`. Only items `eligible` lets through are taken; walks over the long
    /// popularity lists stop after `4 × budget + excluded` steps, so a request never touches
    /// the whole catalog. `rows` ends marking each candidate's position, and `touched` holding what
    /// the basket's and the customer's rows say (what [`Self::features_from`] reads).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gather(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        allow: &[ItemIx],
        categories: &[u32],
        eligible: &dyn Fn(ItemIx) -> bool,
        budget: usize,
        excluded: usize,
        touched: &mut Touched,
        held: &mut Marks,
        rows: &mut Marks,
        lists: &mut Vec<Vec<(ItemIx, f32)>>,
    ) -> Candidates {
        let p = &self.parts;
        let n = self.n_items();
        rows.begin(n);
        let mut out = Candidates::default();
        if !allow.is_empty() {
            self.touch(customer, basket, held, touched, false); // for the features
            for &j in allow {
                if eligible(j) && !rows.contains(j) {
                    rows.set(j, out.items.len() as u32);
                    out.items.push(j);
                    out.sources.push(0);
                }
            }
            return out;
        }
        let walk = budget.saturating_mul(4).saturating_add(excluded);
        lists.resize_with(crate::retrieval::SOURCES.len(), Vec::new);
        lists.iter_mut().for_each(Vec::clear);
        self.touch(customer, basket, held, touched, true);
        // EASE (the basket's rows, the pairs it holds whole, the customer's past items, the
        // intercept); co-occurrence: mean P(j | i); embedding neighbours (mean) and look-alikes
        // (max); names
        let intercept = |j: ItemIx| p.ease_always_on.get(j as usize).copied().unwrap_or(0.0);
        touched.fill_lists(
            eligible,
            |j, t| [t.ease + t.ease_history + intercept(j), t.cooc_mean, t.comp, t.similar, t.names],
            budget,
            lists,
        );
        if !p.ease_always_on.is_empty() {
            let untouched =
                self.prior_order.iter().take(walk).filter(|&&j| !touched.touched_by(j, Source::Ease) && eligible(j)).take(budget);
            lists[0].extend(untouched.map(|&j| (j, p.ease_always_on[j as usize])));
            truncate_best(&mut lists[0], budget);
        }
        // the customer's past items, by share of the customer's orders plus recency
        if let Some(c) = customer {
            let (items, counts) = p.history.row(c as usize);
            let (_, ages) = p.since.row(c as usize);
            let orders = p.customers.orders[c as usize].max(1.0);
            let scored = items.iter().zip(counts).zip(ages).map(|((&i, &h), &age)| (i, h / orders + 1.0 / (1.0 + age.max(0.0))));
            lists[5].extend(scored.filter(|&(j, _)| eligible(j)));
            truncate_best(&mut lists[5], budget);
        }
        // popularity: within the wanted categories, else recent popularity
        let popular: Box<dyn Iterator<Item = &ItemIx>> = if categories.is_empty() {
            Box::new(self.popular_order.iter())
        } else {
            Box::new(categories.iter().flat_map(|&c| self.category_items[c as usize].iter()))
        };
        let walked = popular.take(walk).filter(|&&j| eligible(j)).take(budget);
        lists[6].extend(walked.enumerate().map(|(r, &j)| (j, -(r as f32))));
        crate::retrieval::merge(lists, budget, rows, &mut out);
        out
    }

    /// The item's kind, for the per-category cap, diversity and substitutes: its catalog
    /// category, or in a catalog without categories its latent category.
    pub fn group_of(&self, j: ItemIx) -> Option<u32> {
        self.kind_of[j as usize]
    }

    /// Whether kinds come from latent categories (the catalog has none).
    pub fn latent_kinds(&self) -> bool {
        self.category_index.is_empty() && self.kind_of.iter().any(Option::is_some)
    }

    /// True when `j` is a substitute (or an upsell: notably pricier, see [`UPSELL_PRICE_RATIO`])
    /// of basket item `i`: same kind ([`Self::group_of`]), and bought
    /// together less often than chance. In a category whose items are seldom bought together
    /// (cameras), a pair is a substitute unless it is clearly bought together more than chance;
    /// elsewhere only when both items sell well enough to judge and the pair sells below chance.
    pub fn is_substitute(&self, i: ItemIx, j: ItemIx) -> bool {
        (!self.latent_kinds() || self.parts.latent_substitutes) && self.judged_substitute(i, j)
    }

    /// The substitute evidence of [`Self::is_substitute`], also within latent categories the
    /// model does not apply it to (what the offline evaluation measures leaks with).
    pub fn judged_substitute(&self, i: ItemIx, j: ItemIx) -> bool {
        let (ci, cj) = (self.kind_of[i as usize], self.kind_of[j as usize]);
        let Some(c) = ci.filter(|_| ci == cj) else {
            return false;
        };
        let p = &self.parts;
        let expected = p.items.orders[i as usize] * p.items.orders[j as usize] / p.n_orders.max(1.0);
        let together = p.pairs.get(i as usize, j);
        if self.substitute_kind[c as usize] {
            // clearly more often together than chance (beyond Poisson noise), or a substitute
            together <= expected + 2.0 * expected.sqrt() + 1.0
        } else if self.category_index.is_empty() {
            // latent kinds (items used in the same contexts): a substitute unless bought
            // together more than chance by a standard deviation (and more than once)
            together <= (expected + expected.sqrt()).max(1.0)
        } else if self.is_upsell(i, j) {
            // a notably pricier item of the basket item's kind: an upsell unless clearly bought
            // together with it (two flavours of one thing), however rare the pair
            together <= expected + 2.0 * expected.sqrt() + 1.0
        } else {
            expected >= SUBSTITUTE_MIN_EXPECTED && together < expected
        }
    }

    /// Whether `j` costs more than [`UPSELL_PRICE_RATIO`] times basket item `i` (both priced).
    fn is_upsell(&self, i: ItemIx, j: ItemIx) -> bool {
        let prices = &self.parts.items.prices;
        let (pi, pj) = (prices[i as usize], prices[j as usize]);
        pi.is_finite() && pi > 0.0 && pj.is_finite() && pj > UPSELL_PRICE_RATIO * pi
    }

    /// Ranks offers for a request (validated here) under the built-in [`Policies`]: candidates
    /// from the sources (or the allow-list), then features and scores for those only, then the
    /// touchpoint policy's rules.
    pub fn rank(&self, q: &RankQuery) -> Result<Ranking> {
        self.rank_with(q, &DEFAULT_POLICIES)
    }

    /// [`CrossSellModel::rank`] under the given policies (the server's configuration).
    pub fn rank_with(&self, q: &RankQuery, policies: &Policies) -> Result<Ranking> {
        with_scratch(|s| self.rank_in(q, policies.get(q.touchpoint), s))
    }

    fn rank_in(&self, q: &RankQuery, policy: &RankPolicy, s: &mut Scratch) -> Result<Ranking> {
        let (r, cands) = self.resolve_and_gather(q, policy, s)?;
        let p = &self.parts;
        let mut out = Ranking { customer_known: r.customer.is_some(), unknown_items: r.unknown_items, ..Default::default() };
        if r.rule == CustomerRule::Suppress {
            out.suppressed = Some(Suppression::ReturnRisk);
            return Ok(out);
        }
        let effective = Effective::of(q, policy, r.rule, &mut out.withheld);
        let (customer, basket, items) = (r.customer, &r.basket, &cands.items);
        if !items.is_empty() {
            let x = self.features_from(customer, basket, items, &s.rows, &s.touched);
            let ranker = match &p.discovery_ranker {
                Some(d) if q.new_to_customer && customer.is_some() => d,
                _ => &p.ranker,
            };
            let scores = ranker.scores(&x);
            let make = |row: usize, score, probability| RankedItem {
                item: items[row],
                score,
                probability,
                reason: self.reason(customer, basket, items[row], x.row(row)),
                drivers: Vec::new(),
            };
            out.items = {
                let scored = Scored { ranker, items, scores: scores.as_slice().expect("contiguous") };
                self.apply_policy(&effective, &scored, basket, &mut out.withheld, make)
            };
            if q.explain && !out.items.is_empty() {
                let offers: Vec<ItemIx> = out.items.iter().map(|o| o.item).collect();
                let drivers = self.drivers(ranker, customer, basket, &offers, s);
                for (o, d) in out.items.iter_mut().zip(drivers) {
                    o.drivers = d;
                }
            }
        }
        if out.items.is_empty() {
            let below = out.withheld.iter().any(|w| matches!(w, Withheld::BelowMinProbability(_)));
            out.suppressed = Some(if below { Suppression::BelowMinProbability } else { Suppression::NoEligibleItem });
        }
        Ok(out)
    }
}

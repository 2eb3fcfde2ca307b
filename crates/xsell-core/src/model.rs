//! The served cross-sell model and its ranking.
//!
//! [`ModelParts`] is the plain data a bundle stores; [`CrossSellModel`] validates it once and adds
//! the lookup tables ranking needs. Ranking has two stages: a bounded candidate set is gathered
//! from sparse sources ([`crate::retrieval`]), then only those candidates get features and scores,
//! with the same code the trainer fits the ranker on ([`CrossSellModel::candidate_features`]), so
//! training, `xsell eval` and the gRPC server cannot drift apart, and no request does work
//! proportional to the catalog.

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::names::NameIndex;
use crate::retrieval::{Acc, Candidates, Marks, Neighbours, Retrieval, Scratch, truncate_best, unit_rows, with_scratch};
use crate::{Csr, CustomerIx, Error, ItemIx, Result};

/// Names of the ranker's features, in column order of [`CrossSellModel::features`].
pub const FEATURES: [&str; 16] = [
    "cooc_max",     // max over basket items i of P(j | i)
    "cooc_mean",    // mean over basket items of P(j | i)
    "jaccard_max",  // max over basket items of |i ∧ j| / |i ∨ j|
    "jaccard_mean", // mean over basket items of the Jaccard index
    "ease",         // sum over basket items of the EASE weight B[i, j]
    "ease_history", // sum over the customer's 50 most-bought past items of their order share × B[i, j]
    "emb_comp",     // mean over basket items of input(i) · output(j): "bought with"
    "emb_cos",      // max cosine(input(i), input(j)): "used in the same contexts"
    "name_basket",  // cosine of j's name (TF-IDF of its words) with the basket's names together
    "name_max",     // max over basket items of the cosine between the two names
    "popularity",   // log(1 + orders with j) / log(1 + orders)
    "pop_recent",   // the same over the newest training orders (trends, seasons)
    "hist_log",     // log(1 + orders of this customer with j)
    "hist_share",   // share of this customer's orders with j
    "hist_recency", // 1 / (1 + this customer's orders since their last one with j)
    "item_returns", // share of j's sold lines that came back
];
/// Number of ranker features.
pub const N_FEATURES: usize = FEATURES.len();

/// Column indices of [`FEATURES`].
pub mod feature {
    #![allow(missing_docs)]
    pub const COOC_MAX: usize = 0;
    pub const COOC_MEAN: usize = 1;
    pub const JACCARD_MAX: usize = 2;
    pub const JACCARD_MEAN: usize = 3;
    pub const EASE: usize = 4;
    pub const EASE_HISTORY: usize = 5;
    pub const EMB_COMP: usize = 6;
    pub const EMB_COS: usize = 7;
    pub const NAME_BASKET: usize = 8;
    pub const NAME_MAX: usize = 9;
    pub const POPULARITY: usize = 10;
    pub const POP_RECENT: usize = 11;
    pub const HIST_LOG: usize = 12;
    pub const HIST_SHARE: usize = 13;
    pub const HIST_RECENCY: usize = 14;
    pub const ITEM_RETURNS: usize = 15;
}

/// Feature groups, for ablations: a group's features are zeroed together.
pub const FEATURE_GROUPS: [(&str, &[usize]); 7] = {
    use feature::*;
    [
        ("co-occurrence", &[COOC_MAX, COOC_MEAN, JACCARD_MAX, JACCARD_MEAN]),
        ("ease", &[EASE]),
        ("embeddings", &[EMB_COMP, EMB_COS]),
        ("names", &[NAME_BASKET, NAME_MAX]),
        ("popularity", &[POPULARITY, POP_RECENT]),
        ("customer history", &[EASE_HISTORY, HIST_LOG, HIST_SHARE, HIST_RECENCY]),
        ("returns", &[ITEM_RETURNS]),
    ]
};

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

/// The learned ranker over standardized features `z = (x − mean) / scale`: a linear part plus,
/// optionally, one hidden ReLU layer, then Platt calibration.
///
/// `score = weights · z + bias + Σₕ hidden_out[h] · relu(hidden[h] · z + hidden_bias[h])`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranker {
    /// Feature means subtracted before scoring.
    pub mean: Vec<f32>,
    /// Feature scales divided by before scoring.
    pub scale: Vec<f32>,
    /// Weights over standardized features.
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
    /// Hidden units' weights, units × features, row-major (empty: a linear ranker).
    #[serde(default)]
    pub hidden: Vec<f32>,
    /// Hidden units' intercepts.
    #[serde(default)]
    pub hidden_bias: Vec<f32>,
    /// Hidden units' output weights.
    #[serde(default)]
    pub hidden_out: Vec<f32>,
    /// Calibration slope: probability = sigmoid(calib_a × score + calib_b).
    pub calib_a: f32,
    /// Calibration intercept.
    pub calib_b: f32,
}

impl Ranker {
    /// A ranker that scores by one feature (used before a ranker is fitted, and for ablations).
    pub fn single(feature: usize) -> Self {
        let mut weights = vec![0.0; N_FEATURES];
        weights[feature] = 1.0;
        Ranker {
            mean: vec![0.0; N_FEATURES],
            scale: vec![1.0; N_FEATURES],
            weights,
            bias: 0.0,
            hidden: Vec::new(),
            hidden_bias: Vec::new(),
            hidden_out: Vec::new(),
            calib_a: 1.0,
            calib_b: 0.0,
        }
    }

    /// Number of hidden units.
    pub fn n_hidden(&self) -> usize {
        self.hidden_out.len()
    }

    /// Checks shapes and values.
    pub fn validate(&self) -> Result<()> {
        let inc = |m: String| Err(Error::Inconsistent(m));
        if self.mean.len() != N_FEATURES || self.scale.len() != N_FEATURES || self.weights.len() != N_FEATURES {
            return inc(format!("the ranker must have {N_FEATURES} features"));
        }
        let h = self.n_hidden();
        if self.hidden.len() != h * N_FEATURES || self.hidden_bias.len() != h {
            return inc(format!("the ranker's hidden layer must be {h} × {N_FEATURES} with {h} intercepts"));
        }
        let params = [&self.mean, &self.weights, &self.hidden, &self.hidden_bias, &self.hidden_out];
        if params.iter().any(|v| v.iter().any(|x| !x.is_finite()))
            || self.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || !(self.bias.is_finite() && self.calib_a.is_finite() && self.calib_b.is_finite())
        {
            return inc("the ranker has a non-finite or non-positive parameter".into());
        }
        Ok(())
    }

    /// Scores of each row of a feature matrix.
    pub fn scores(&self, x: &Array2<f32>) -> Array1<f32> {
        let mean = ArrayView1::from(&self.mean);
        let scale = ArrayView1::from(&self.scale);
        let z = (x - &mean) / scale;
        let mut s = z.dot(&ArrayView1::from(&self.weights)) + self.bias;
        let h = self.n_hidden();
        if h > 0 {
            let w1 = ArrayView2::from_shape((h, N_FEATURES), &self.hidden).expect("validated shape");
            let mut a = z.dot(&w1.t()) + ArrayView1::from(&self.hidden_bias);
            a.mapv_inplace(|v| v.max(0.0));
            s += &a.dot(&ArrayView1::from(&self.hidden_out));
        }
        s
    }

    /// Calibrated probability of a score.
    pub fn probability(&self, score: f32) -> f32 {
        sigmoid(self.calib_a * score + self.calib_b)
    }
}

/// Per category: whether its items are bought together less often than chance, from the
/// stored co-purchase counts (pairs of items sold too rarely to judge do not count).
fn substitute_categories(p: &ModelParts, category_of: &[Option<u32>], n_categories: usize) -> Vec<bool> {
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

/// Logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Ranking policy of a model: the business rules applied after scoring.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Offers are suppressed for customers whose return rate reaches this share ...
    pub return_suppress_rate: f32,
    /// ... once they have at least this many purchase lines.
    pub return_suppress_min_lines: f32,
    /// Items sold at least this many times in training can be judged substitutes.
    pub substitute_min_expected: f32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { return_suppress_rate: 0.5, return_suppress_min_lines: 10.0, substitute_min_expected: 1.0 }
    }
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
    /// `history[c, i]`: training orders of customer `c` with item `i`.
    pub history: Csr,
    /// `since[c, i]`: orders of customer `c` after their last one with item `i`.
    pub since: Csr,
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
    /// The policy.
    pub policy: Policy,
    /// Embedding neighbour lists (empty: computed when the model is built, as for bundles
    /// from before they were stored).
    pub neighbours: Neighbours,
    /// Candidate generation settings.
    pub retrieval: Retrieval,
}

/// Neighbours kept per item and list when they are computed at load time.
pub const LOAD_TIME_NEIGHBOURS: usize = 50;
/// ... among at most this many most-bought items.
pub const LOAD_TIME_NEIGHBOUR_TARGETS: usize = 20_000;

/// Where the offer is shown; changes what is sensible to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Touchpoint {
    /// Not said: no touchpoint rule.
    #[default]
    Unspecified,
    /// Product detail page.
    ProductPage,
    /// Cart page.
    Cart,
    /// Checkout: few, cheap, instantly addable offers.
    Checkout,
    /// After the purchase (confirmation, e-mail, portal).
    PostPurchase,
}

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

/// Why an item is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Often bought together with this basket item.
    BoughtWith(ItemIx),
    /// Complements this basket item (learned embeddings).
    Complements(ItemIx),
    /// The customer bought it before.
    BoughtBefore,
    /// Popular overall (cold start).
    Popular,
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
}

/// Why every offer of a ranking was withheld on purpose. A code the client can branch on; it
/// never carries the customer's personal figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    /// The customer habitually returns goods (their return rate passed the policy's threshold).
    ReturnRisk,
}

impl Suppression {
    /// A short text for people, without personal figures.
    pub fn describe(self) -> &'static str {
        match self {
            Suppression::ReturnRisk => "offers withheld: this customer's return risk is above the policy's threshold",
        }
    }
}

/// A validated model, ready to rank.
#[derive(Debug, Clone)]
pub struct CrossSellModel {
    parts: ModelParts,
    item_index: HashMap<String, ItemIx>,
    customer_index: HashMap<String, CustomerIx>,
    category_of: Vec<Option<u32>>,
    category_index: HashMap<String, u32>,
    /// Per category: are two of its items bought together less often than chance?
    substitute_category: Vec<bool>,
    /// Per item `a`: `(b, p)` for each EASE pair `p = (a, b)`.
    pair_partners: Vec<Vec<(ItemIx, u32)>>,
    emb_in_unit: Array2<f32>,
    names: NameIndex,
    /// Items by recent popularity, then popularity (the popular source walks it).
    popular_order: Vec<ItemIx>,
    /// Items by EASE intercept (empty without one).
    prior_order: Vec<ItemIx>,
    /// Per category: its items by popularity (the popular source under a category filter).
    category_items: Vec<Vec<ItemIx>>,
}

/// A request resolved against the model: who, what is in the basket, what may be offered.
struct Resolved {
    customer: Option<CustomerIx>,
    basket: Vec<ItemIx>,
    unknown_items: Vec<String>,
    suppressed: Option<Suppression>,
    k: usize,
}

/// Most past items of a customer whose EASE rows a request reads (their most bought).
pub const HISTORY_EASE_ITEMS: usize = 50;

/// Source-list entries read per basket item, for [`CrossSellModel::request_work`].
const ROW_WORK: u64 = 1024;

impl CrossSellModel {
    /// Validates the parts and builds the lookup tables.
    pub fn new(parts: ModelParts) -> Result<Self> {
        let n = parts.items.ids.len();
        let nc = parts.customers.ids.len();
        let inc = |m: String| Err(Error::Inconsistent(m));
        if n == 0 {
            return inc("the model has no item".into());
        }
        let it = &parts.items;
        if [it.names.len(), it.categories.len(), it.prices.len(), it.orders.len(), it.recent_orders.len(), it.return_rate.len()]
            .iter()
            .any(|&l| l != n)
        {
            return inc("item table columns differ in length".into());
        }
        let ct = &parts.customers;
        if ct.orders.len() != nc || ct.return_rate.len() != nc || parts.customer_lines.len() != nc {
            return inc("customer table columns differ in length".into());
        }
        parts.pairs.validate(n, n).map_err(|e| Error::Inconsistent(format!("pairs: {e}")))?;
        parts.history.validate(nc, n).map_err(|e| Error::Inconsistent(format!("history: {e}")))?;
        parts.since.validate(nc, n).map_err(|e| Error::Inconsistent(format!("since: {e}")))?;
        if parts.since.indptr != parts.history.indptr || parts.since.indices != parts.history.indices {
            return inc("since and history must hold the same customer-item pairs".into());
        }
        parts.ease.validate(n, n).map_err(|e| Error::Inconsistent(format!("ease: {e}")))?;
        let ep = &parts.ease_pairs;
        ep.weights.validate(ep.pairs.len(), n).map_err(|e| Error::Inconsistent(format!("ease pair weights: {e}")))?;
        if let Some((q, (a, b))) = ep.pairs.iter().enumerate().find(|(_, (a, b))| a >= b || *b as usize >= n) {
            return inc(format!("ease pair {q} is ({a}, {b}): expected two item indices a < b < {n}"));
        }
        let pair_partners = pair_partners(&ep.pairs, n);
        if !parts.ease_always_on.is_empty() && parts.ease_always_on.len() != n {
            return inc(format!("ease intercept has {} values for {n} items", parts.ease_always_on.len()));
        }
        if parts.ease_always_on.iter().any(|v| !v.is_finite()) {
            return inc("an ease intercept value is not finite".into());
        }
        if parts.emb_in.nrows() != n || parts.emb_out.dim() != parts.emb_in.dim() {
            return inc(format!("embeddings have shape {:?}/{:?}, expected {n} rows", parts.emb_in.dim(), parts.emb_out.dim()));
        }
        if parts.emb_in.iter().chain(parts.emb_out.iter()).any(|v| !v.is_finite()) {
            return inc("an embedding value is not finite".into());
        }
        parts.ranker.validate()?;
        if let Some(r) = &parts.discovery_ranker {
            r.validate()?;
        }
        let mut item_index = HashMap::with_capacity(n);
        for (i, id) in it.ids.iter().enumerate() {
            if item_index.insert(id.clone(), i as ItemIx).is_some() {
                return inc(format!("item id {id:?} appears twice"));
            }
        }
        let customer_index: HashMap<String, CustomerIx> = ct.ids.iter().enumerate().map(|(c, id)| (id.clone(), c as CustomerIx)).collect();
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
        let substitute_category = substitute_categories(&parts, &category_of, category_index.len());
        let names = NameIndex::new(&parts.items.names);
        parts.retrieval.validate()?;
        let mut parts = parts;
        if parts.neighbours.is_empty() {
            parts.neighbours =
                Neighbours::compute(&parts.emb_in, &parts.emb_out, &parts.items.orders, LOAD_TIME_NEIGHBOURS, LOAD_TIME_NEIGHBOUR_TARGETS);
        }
        parts.neighbours.validate(n).map_err(Error::Inconsistent)?;
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
            substitute_category,
            pair_partners,
            emb_in_unit,
            names,
            popular_order,
            prior_order,
            category_items,
        })
    }

    /// The stored parts.
    pub fn parts(&self) -> &ModelParts {
        &self.parts
    }

    /// Number of catalog items.
    pub fn n_items(&self) -> usize {
        self.parts.items.ids.len()
    }

    /// Index of an external item id.
    pub fn item(&self, id: &str) -> Option<ItemIx> {
        self.item_index.get(id).copied()
    }

    /// Index of an external customer id.
    pub fn customer(&self, id: &str) -> Option<CustomerIx> {
        self.customer_index.get(id).copied()
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

    /// Raw (unstandardized) features of every catalog item for a customer and basket:
    /// an items × [`N_FEATURES`] matrix, columns as named in [`FEATURES`] (work proportional to
    /// the catalog: for tests and analysis, never on the serving path).
    pub fn features(&self, customer: Option<CustomerIx>, basket: &[ItemIx]) -> Array2<f32> {
        let all: Vec<ItemIx> = (0..self.n_items() as ItemIx).collect();
        self.features_of(customer, basket, &all)
    }

    /// Raw features of `items` (row `r` is `items[r]`; each item once) for a customer and basket.
    /// An item's row does not depend on which other items are listed.
    pub fn features_of(&self, customer: Option<CustomerIx>, basket: &[ItemIx], items: &[ItemIx]) -> Array2<f32> {
        with_scratch(|s| {
            s.rows.begin(self.n_items());
            for (r, &j) in items.iter().enumerate() {
                s.rows.set(j, r as u32);
            }
            self.fill_features(customer, basket, items, &s.rows, &mut s.held)
        })
    }

    /// The candidates the trainer and the validation rank for a query (basket items left out,
    /// and the customer's past items for a discovery query; no other filter), with `extra`
    /// added when it is not among them (a training target), and their raw features.
    pub fn candidate_features(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        extra: Option<ItemIx>,
        new_to_customer: bool,
    ) -> (Candidates, Array2<f32>) {
        with_scratch(|s| {
            let n = self.n_items();
            s.excluded.begin(n);
            for &i in basket {
                s.excluded.set(i, 0);
            }
            if new_to_customer && let Some(c) = customer {
                for &i in self.parts.history.row(c as usize).0 {
                    s.excluded.set(i, 0);
                }
            }
            let Scratch { excluded, rows, acc, held, lists } = s;
            let eligible = |j: ItemIx| !excluded.contains(j);
            let mut c = self.gather(customer, basket, &[], &[], &eligible, self.budget(), basket.len(), acc, held, rows, lists);
            if let Some(t) = extra.filter(|&t| !rows.contains(t) && (t as usize) < n) {
                rows.set(t, c.items.len() as u32);
                c.items.push(t);
                c.sources.push(0);
            }
            let x = self.fill_features(customer, basket, &c.items, rows, held);
            (c, x)
        })
    }

    /// The candidate set a request would be ranked over, with the sources that brought each
    /// item (what `xsell eval` reports as candidate recall).
    pub fn candidates(&self, q: &RankQuery) -> Result<Candidates> {
        with_scratch(|s| Ok(self.resolve_and_gather(q, s)?.1))
    }

    /// Checks the request, resolves its ids, and gathers its candidates (into `s.rows`).
    fn resolve_and_gather(&self, q: &RankQuery, s: &mut Scratch) -> Result<(Resolved, Candidates)> {
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
        let mut resolved = Resolved { customer, basket, unknown_items, suppressed: None, k: q.k };
        if let Some(c) = customer {
            let c = c as usize;
            let rate = p.customers.return_rate[c];
            if rate >= p.policy.return_suppress_rate && p.customer_lines[c] >= p.policy.return_suppress_min_lines {
                resolved.suppressed = Some(Suppression::ReturnRisk);
                return Ok((resolved, Candidates::default()));
            }
        }
        let n = self.n_items();
        let Scratch { excluded, rows, acc, held, lists } = s;
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
        let mut max_price = f32::NAN;
        if q.touchpoint == Touchpoint::Checkout {
            resolved.k = resolved.k.min(3);
            max_price = resolved.basket.iter().map(|&i| p.items.prices[i as usize]).filter(|v| v.is_finite()).fold(f32::NAN, f32::max);
        }
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
        let c = self.gather(customer, &resolved.basket, &allow, &wanted, &eligible, self.budget(), n_excluded, acc, held, rows, lists);
        Ok((resolved, c))
    }

    /// Gathers candidates: the `allow` items when there are some, else the sources' lists merged
    /// up to `budget`. Only items `eligible` lets through are taken; walks over the long
    /// popularity lists stop after `4 × budget + excluded` steps, so a request never touches
    /// the whole catalog. `rows` ends marking each candidate's position.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        allow: &[ItemIx],
        categories: &[u32],
        eligible: &dyn Fn(ItemIx) -> bool,
        budget: usize,
        excluded: usize,
        acc: &mut Acc,
        held: &mut Marks,
        rows: &mut Marks,
        lists: &mut Vec<Vec<(ItemIx, f32)>>,
    ) -> Candidates {
        let p = &self.parts;
        let n = self.n_items();
        rows.begin(n);
        let mut out = Candidates::default();
        if !allow.is_empty() {
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
        let take = |acc: &Acc, list: &mut Vec<(ItemIx, f32)>| {
            list.extend(acc.items.iter().copied().filter(|&(j, _)| eligible(j)));
            truncate_best(list, budget);
        };
        let orders = customer.map(|c| p.customers.orders[c as usize].max(1.0));
        // EASE: the basket's rows, the pairs it holds whole, the customer's past items, the intercept
        acc.begin(n);
        for &i in basket {
            let (cols, vals) = p.ease.row(i as usize);
            cols.iter().zip(vals).for_each(|(&j, &b)| acc.add(j, b));
        }
        self.for_each_pair_weight(basket, held, |j, w| acc.add(j, w));
        if let Some(orders) = orders {
            for (i, h) in self.history_for_ease(customer) {
                let (cols, vals) = p.ease.row(i as usize);
                cols.iter().zip(vals).for_each(|(&j, &b)| acc.add(j, h / orders * b));
            }
        }
        if !p.ease_always_on.is_empty() {
            acc.items.iter_mut().for_each(|(j, v)| *v += p.ease_always_on[*j as usize]);
        }
        take(acc, &mut lists[0]);
        if !p.ease_always_on.is_empty() {
            let untouched = self.prior_order.iter().take(walk).filter(|&&j| !acc.contains(j) && eligible(j)).take(budget);
            lists[0].extend(untouched.map(|&j| (j, p.ease_always_on[j as usize])));
            truncate_best(&mut lists[0], budget);
        }
        // co-occurrence: Σ P(j | i)
        acc.begin(n);
        for &i in basket {
            let ci = p.items.orders[i as usize].max(1.0);
            let (cols, vals) = p.pairs.row(i as usize);
            cols.iter().zip(vals).for_each(|(&j, &c)| acc.add(j, c / ci));
        }
        take(acc, &mut lists[1]);
        // embedding neighbours (mean over the basket) and look-alikes (max)
        acc.begin(n);
        for &i in basket {
            let (cols, vals) = p.neighbours.comp.row(i as usize);
            cols.iter().zip(vals).for_each(|(&j, &v)| acc.add(j, v / basket.len() as f32));
        }
        take(acc, &mut lists[2]);
        acc.begin(n);
        for &i in basket {
            let (cols, vals) = p.neighbours.similar.row(i as usize);
            cols.iter().zip(vals).for_each(|(&j, &v)| acc.max(j, v));
        }
        take(acc, &mut lists[3]);
        // look-alike names
        acc.begin(n);
        self.names.look_alikes(basket, |j, v| acc.add(j, v));
        take(acc, &mut lists[4]);
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

    /// Raw features of the candidate `items` (`rows` marks each one's row).
    fn fill_features(
        &self,
        customer: Option<CustomerIx>,
        basket: &[ItemIx],
        items: &[ItemIx],
        rows: &Marks,
        held: &mut Marks,
    ) -> Array2<f32> {
        use feature::*;
        let p = &self.parts;
        let m = items.len();
        let mut x = Array2::<f32>::zeros((m, N_FEATURES));
        let log_n = (1.0 + p.n_orders).ln().max(1e-6);
        let log_recent = (1.0 + p.n_recent).ln().max(1e-6);
        for (r, &j) in items.iter().enumerate() {
            let j = j as usize;
            x[[r, POPULARITY]] = (1.0 + p.items.orders[j]).ln() / log_n;
            x[[r, POP_RECENT]] = (1.0 + p.items.recent_orders[j]).ln() / log_recent;
            x[[r, ITEM_RETURNS]] = p.items.return_rate[j];
        }
        if !basket.is_empty() && m > 0 {
            let inv_b = 1.0 / basket.len() as f32;
            for &i in basket {
                let ci = p.items.orders[i as usize].max(1.0);
                let (cols, vals) = p.pairs.row(i as usize);
                for (&j, &cij) in cols.iter().zip(vals) {
                    let Some(r) = rows.get(j) else { continue };
                    let r = r as usize;
                    let cond = cij / ci;
                    let jac = cij / (ci + p.items.orders[j as usize] - cij).max(1.0);
                    x[[r, COOC_MAX]] = x[[r, COOC_MAX]].max(cond);
                    x[[r, COOC_MEAN]] += cond * inv_b;
                    x[[r, JACCARD_MAX]] = x[[r, JACCARD_MAX]].max(jac);
                    x[[r, JACCARD_MEAN]] += jac * inv_b;
                }
                let (cols, vals) = p.ease.row(i as usize);
                for (&j, &b) in cols.iter().zip(vals) {
                    if let Some(r) = rows.get(j) {
                        x[[r as usize, EASE]] += b;
                    }
                }
            }
            self.for_each_pair_weight(basket, held, |j, w| {
                if let Some(r) = rows.get(j) {
                    x[[r as usize, EASE]] += w;
                }
            });
            if !p.ease_always_on.is_empty() {
                for (r, &j) in items.iter().enumerate() {
                    x[[r, EASE]] += p.ease_always_on[j as usize];
                }
            }
            let (basket_sim, best) = self.names.similarities(basket, items);
            x.column_mut(NAME_BASKET).assign(&ArrayView1::from(&basket_sim));
            x.column_mut(NAME_MAX).assign(&ArrayView1::from(&best));
            let b_rows: Vec<usize> = basket.iter().map(|&i| i as usize).collect();
            let c_rows: Vec<usize> = items.iter().map(|&j| j as usize).collect();
            let mean_in = p.emb_in.select(Axis(0), &b_rows).mean_axis(Axis(0)).expect("basket is not empty");
            x.column_mut(EMB_COMP).assign(&p.emb_out.select(Axis(0), &c_rows).dot(&mean_in));
            let sims = self.emb_in_unit.select(Axis(0), &c_rows).dot(&self.emb_in_unit.select(Axis(0), &b_rows).t());
            for (r, row) in sims.axis_iter(Axis(0)).enumerate() {
                x[[r, EMB_COS]] = row.iter().copied().fold(f32::MIN, f32::max);
            }
        }
        if let Some(c) = customer
            && m > 0
        {
            let orders = p.customers.orders[c as usize].max(1.0);
            let (cols, vals) = p.history.row(c as usize);
            let (_, ages) = p.since.row(c as usize); // the same pairs, validated
            for ((&i, &h), &age) in cols.iter().zip(vals).zip(ages) {
                if let Some(r) = rows.get(i) {
                    let r = r as usize;
                    x[[r, HIST_LOG]] = h.ln_1p();
                    x[[r, HIST_SHARE]] = h / orders;
                    x[[r, HIST_RECENCY]] = 1.0 / (1.0 + age.max(0.0));
                }
            }
            for (i, h) in self.history_for_ease(customer) {
                let share = h / orders;
                let (ecols, evals) = p.ease.row(i as usize);
                for (&j, &b) in ecols.iter().zip(evals) {
                    if let Some(r) = rows.get(j) {
                        x[[r as usize, EASE_HISTORY]] += share * b;
                    }
                }
            }
        }
        x
    }

    /// The customer's past items whose EASE rows count (`ease_history` and the EASE source): the
    /// [`HISTORY_EASE_ITEMS`] bought in the most orders (ties: the lower index), by index, so a
    /// long history costs a bounded number of rows.
    fn history_for_ease(&self, customer: Option<CustomerIx>) -> Vec<(ItemIx, f32)> {
        let Some(c) = customer else { return Vec::new() };
        let (cols, vals) = self.parts.history.row(c as usize);
        let mut v: Vec<(ItemIx, f32)> = cols.iter().copied().zip(vals.iter().copied()).collect();
        if v.len() > HISTORY_EASE_ITEMS {
            truncate_best(&mut v, HISTORY_EASE_ITEMS);
            v.sort_unstable_by_key(|&(i, _)| i);
        }
        v
    }

    /// Calls `f(j, w)` for every weight of every EASE pair held whole by `basket`.
    fn for_each_pair_weight(&self, basket: &[ItemIx], held: &mut Marks, mut f: impl FnMut(ItemIx, f32)) {
        let pw = &self.parts.ease_pairs;
        if pw.pairs.is_empty() || basket.len() < 2 {
            return;
        }
        held.begin(self.n_items());
        for &i in basket {
            held.set(i, 0);
        }
        for &a in basket {
            for &(b, q) in &self.pair_partners[a as usize] {
                if held.contains(b) {
                    let (cols, vals) = pw.weights.row(q as usize);
                    cols.iter().zip(vals).for_each(|(&j, &w)| f(j, w));
                }
            }
        }
    }

    /// True when `j` is a substitute of basket item `i`: same known category, and bought
    /// together less often than chance. In a category whose items are seldom bought together
    /// (cameras), a pair is a substitute unless it is clearly bought together more than chance;
    /// elsewhere only when both items sell well enough to judge and the pair sells below chance.
    pub fn is_substitute(&self, i: ItemIx, j: ItemIx) -> bool {
        let (ci, cj) = (self.category_of[i as usize], self.category_of[j as usize]);
        let Some(c) = ci.filter(|_| ci == cj) else {
            return false;
        };
        let p = &self.parts;
        let expected = p.items.orders[i as usize] * p.items.orders[j as usize] / p.n_orders.max(1.0);
        let together = p.pairs.get(i as usize, j);
        if self.substitute_category[c as usize] {
            // clearly more often together than chance (beyond Poisson noise), or a substitute
            together <= expected + 2.0 * expected.sqrt() + 1.0
        } else {
            expected >= p.policy.substitute_min_expected && together < expected
        }
    }

    /// Ranks offers for a request (validated here): candidates from the sources (or the
    /// allow-list), then features and scores for those only.
    pub fn rank(&self, q: &RankQuery) -> Result<Ranking> {
        with_scratch(|s| self.rank_in(q, s))
    }

    fn rank_in(&self, q: &RankQuery, s: &mut Scratch) -> Result<Ranking> {
        let (r, cands) = self.resolve_and_gather(q, s)?;
        let p = &self.parts;
        let mut out = Ranking {
            customer_known: r.customer.is_some(),
            unknown_items: r.unknown_items,
            suppressed: r.suppressed,
            ..Default::default()
        };
        if out.suppressed.is_some() || cands.items.is_empty() {
            return Ok(out);
        }
        let (customer, basket, items) = (r.customer, &r.basket, &cands.items);
        let x = self.fill_features(customer, basket, items, &s.rows, &mut s.held);
        let ranker = match &p.discovery_ranker {
            Some(d) if q.new_to_customer && customer.is_some() => d,
            _ => &p.ranker,
        };
        let scores = ranker.scores(&x);
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(items[a].cmp(&items[b])));
        let mut per_category: HashMap<u32, usize> = HashMap::new();
        for row in order {
            if out.items.len() == r.k {
                break;
            }
            let (j, score) = (items[row], scores[row]);
            let probability = ranker.probability(score);
            if probability < q.min_probability {
                break; // scores are sorted, so every later item is below the threshold too
            }
            if !q.allow_substitutes && basket.iter().any(|&i| self.is_substitute(i, j)) {
                continue;
            }
            if q.max_per_category > 0
                && let Some(c) = self.category_of[j as usize]
            {
                let seen = per_category.entry(c).or_default();
                if *seen >= q.max_per_category {
                    continue;
                }
                *seen += 1;
            }
            out.items.push(RankedItem { item: j, score, probability, reason: self.reason(customer, basket, j, x.row(row)) });
        }
        Ok(out)
    }

    fn reason(&self, customer: Option<CustomerIx>, basket: &[ItemIx], j: ItemIx, x: ArrayView1<'_, f32>) -> Reason {
        let p = &self.parts;
        let best_pair = basket
            .iter()
            .map(|&i| (i, p.pairs.get(i as usize, j) / p.items.orders[i as usize].max(1.0)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((i, cond)) = best_pair
            && cond > 0.0
        {
            return Reason::BoughtWith(i);
        }
        if customer.is_some() && x[feature::HIST_LOG] > 0.0 {
            return Reason::BoughtBefore;
        }
        let best_emb = basket
            .iter()
            .map(|&i| (i, p.emb_in.row(i as usize).dot(&p.emb_out.row(j as usize))))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best_emb {
            Some((i, _)) => Reason::Complements(i),
            None => Reason::Popular,
        }
    }

    /// A human-readable explanation of a reason.
    pub fn explain(&self, reason: Reason) -> (Option<&str>, String) {
        let name = |i: ItemIx| {
            let it = &self.parts.items;
            it.names[i as usize].clone().unwrap_or_else(|| it.ids[i as usize].clone())
        };
        match reason {
            Reason::BoughtWith(i) => (Some(self.parts.items.ids[i as usize].as_str()), format!("often bought with {}", name(i))),
            Reason::Complements(i) => (Some(self.parts.items.ids[i as usize].as_str()), format!("complements {}", name(i))),
            Reason::BoughtBefore => (None, "you bought this before".into()),
            Reason::Popular => (None, "popular with other customers".into()),
        }
    }
}

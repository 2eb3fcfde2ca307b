//! Item embeddings: skip-gram with negative sampling over co-purchase pairs, in burn.
//!
//! Each step samples `batch_size` (item, co-purchased item) pairs with probability proportional
//! to `count^0.75` from the aggregate pair table, and `negatives` items per pair from the
//! unigram distribution raised to 0.75. `input(i) · output(j)` then scores "j is bought with i";
//! `cos(input(i), input(j))` scores "i and j appear in the same contexts" (often substitutes).
//!
//! burn computes each step's loss and gradients over the rows the step gathered (leaf tensors of
//! batch size, not the whole tables); the tables and their Adam moments live in plain vectors
//! and a step updates only its rows, so a step costs the same at 5k items as at 1M.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xsell_core::Csr;

use crate::{Progress, Result, TrainConfig, TrainError};

/// The skip-gram loss of one step, over the rows it gathered: `centers` (b × d) from the input
/// table, `contexts` (b × d) and `negatives` (b·k × d) from the output table.
fn loss(centers: Tensor<2>, contexts: Tensor<2>, negatives: Tensor<2>, k: usize) -> Tensor<1> {
    let [b, d] = centers.dims();
    let pos = (centers.clone() * contexts).sum_dim(1);
    let n = negatives.reshape([b, k, d]);
    let neg = (centers.unsqueeze_dim::<3>(1) * n).sum_dim(2).reshape([b, k]);
    let pos_term = log_sigmoid(pos).mean();
    let neg_term = log_sigmoid(neg.neg()).sum_dim(1).mean();
    (pos_term + neg_term).neg()
}

/// One embedding table trained with row-sparse ("lazy") Adam: a step reads and updates only the
/// rows its batch uses, so its cost follows the batch, not the catalog. The moments of a row
/// move only when the row gets a gradient; the bias correction is the global step's, as in
/// burn's dense Adam (same β₁, β₂, ε).
struct Table {
    d: usize,
    weights: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Per row: its slot in `rows` during a step, `u32::MAX` when it has none.
    slot: Vec<u32>,
    /// The rows of this step, and their summed gradients (`rows.len()` × d).
    rows: Vec<u32>,
    grad: Vec<f32>,
}

const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

impl Table {
    fn new(weights: Vec<f32>, d: usize) -> Self {
        let n = weights.len() / d.max(1);
        Table {
            d,
            m: vec![0.0; weights.len()],
            v: vec![0.0; weights.len()],
            weights,
            slot: vec![u32::MAX; n],
            rows: Vec::new(),
            grad: Vec::new(),
        }
    }

    /// The rows `ids` (one per occurrence), as a `ids.len()` × d leaf that records its gradient.
    fn gather(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        let d = self.d;
        let mut v = Vec::with_capacity(ids.len() * d);
        for &r in ids {
            v.extend_from_slice(&self.weights[r as usize * d..(r as usize + 1) * d]);
        }
        Tensor::from_data(TensorData::new(v, [ids.len(), d]), device).require_grad()
    }

    /// Adds the gradient of a gathered leaf (row `k` belongs to `ids[k]`) to this step's rows.
    fn accumulate(&mut self, ids: &[u32], grad: &[f32]) {
        let d = self.d;
        for (k, &r) in ids.iter().enumerate() {
            let s = match self.slot[r as usize] {
                u32::MAX => {
                    self.slot[r as usize] = self.rows.len() as u32;
                    self.rows.push(r);
                    self.grad.extend_from_slice(&grad[k * d..(k + 1) * d]);
                    continue;
                }
                s => s as usize,
            };
            self.grad[s * d..(s + 1) * d].iter_mut().zip(&grad[k * d..(k + 1) * d]).for_each(|(a, g)| *a += g);
        }
    }

    /// Applies this step's Adam update (step `t`, from 1) to its rows and forgets them.
    fn update(&mut self, lr: f32, t: i32) {
        let d = self.d;
        let bc2 = (1.0 - BETA_2.powi(t)).sqrt();
        let factor = lr * bc2 / (1.0 - BETA_1.powi(t));
        for (s, &r) in self.rows.iter().enumerate() {
            let at = r as usize * d;
            for c in 0..d {
                let g = self.grad[s * d + c];
                let (m, v) = (&mut self.m[at + c], &mut self.v[at + c]);
                *m = BETA_1 * *m + (1.0 - BETA_1) * g;
                *v = BETA_2 * *v + (1.0 - BETA_2) * g * g;
                self.weights[at + c] -= factor * *m / (v.sqrt() + EPSILON * bc2);
            }
            self.slot[r as usize] = u32::MAX;
        }
        self.rows.clear();
        self.grad.clear();
    }

    fn into_array(self) -> Result<Array2<f32>> {
        let n = self.weights.len() / self.d.max(1);
        Array2::from_shape_vec((n, self.d), self.weights).map_err(|e| TrainError::Tensor(e.to_string()))
    }
}

/// The gradient a step's loss gave a gathered leaf, as a flat vector.
fn gradient(leaf: &Tensor<2>, grads: &mut burn::tensor::Gradients) -> Result<Vec<f32>> {
    let g = leaf.grad_remove(grads).ok_or_else(|| TrainError::Tensor("embedding rows got no gradient".into()))?;
    g.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Tensor(format!("{e:?}")))
}

/// A sampler over a discrete distribution (cumulative weights, binary search).
pub(crate) struct Sampler {
    cumulative: Vec<f64>,
}

impl Sampler {
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut total = 0.0;
        let cumulative: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                total += w.max(0.0);
                total
            })
            .collect();
        (total > 0.0).then_some(Sampler { cumulative })
    }

    pub(crate) fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().expect("sampler is not empty");
        let x = rng.random::<f64>() * total;
        self.cumulative.partition_point(|&c| c <= x).min(self.cumulative.len() - 1)
    }
}

/// Where embedding training starts from: some items' rows of an earlier model (an update), and
/// the share of a fresh fit's steps to take from there.
#[derive(Debug, Clone, Copy)]
pub struct WarmStart<'a> {
    /// Per item, its row in `emb_in` / `emb_out` (None: a new item, started fresh).
    pub rows: &'a [Option<u32>],
    /// The earlier input embeddings.
    pub emb_in: &'a Array2<f32>,
    /// The earlier output embeddings.
    pub emb_out: &'a Array2<f32>,
    /// Steps taken, as a share of a fresh fit's (at least one).
    pub steps_share: f64,
}

/// Trains input and output embeddings (items × `cfg.dim`) from pair counts and item counts.
pub fn train_embeddings(
    pairs: &Csr,
    item_counts: &[f32],
    cfg: &TrainConfig,
    progress: &mut dyn Progress,
) -> Result<(Array2<f32>, Array2<f32>)> {
    train_embeddings_from(pairs, item_counts, cfg, None, progress)
}

/// [`train_embeddings`], continuing from an earlier model's rows when `warm` is given.
pub fn train_embeddings_from(
    pairs: &Csr,
    item_counts: &[f32],
    cfg: &TrainConfig,
    warm: Option<WarmStart<'_>>,
    progress: &mut dyn Progress,
) -> Result<(Array2<f32>, Array2<f32>)> {
    let n = item_counts.len();
    let d = cfg.dim;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut init: Vec<f32> = (0..n * d).map(|_| (rng.random::<f32>() - 0.5) / d as f32).collect();
    let mut init_out = vec![0.0; n * d];
    if let Some(w) = warm.filter(|w| w.emb_in.ncols() == d && w.emb_out.ncols() == d) {
        for (i, r) in w.rows.iter().enumerate().take(n) {
            if let Some(r) = *r {
                init[i * d..(i + 1) * d].iter_mut().zip(w.emb_in.row(r as usize)).for_each(|(x, &v)| *x = v);
                init_out[i * d..(i + 1) * d].iter_mut().zip(w.emb_out.row(r as usize)).for_each(|(x, &v)| *x = v);
            }
        }
    }
    let (Some(pair_sampler), Some(neg_sampler)) = (
        Sampler::new(pairs.values.iter().map(|&c| f64::from(c).powf(0.75))),
        Sampler::new(item_counts.iter().map(|&c| f64::from(c).powf(0.75))),
    ) else {
        // no co-purchase at all: embeddings carry no signal, keep them neutral
        return Ok((Array2::zeros((n, d)), Array2::zeros((n, d))));
    };
    // row of each stored pair, to turn a sampled pair position into (center, context)
    let mut pair_rows = vec![0u32; pairs.indices.len()];
    for r in 0..pairs.n_rows() {
        pair_rows[pairs.indptr[r] as usize..pairs.indptr[r + 1] as usize].fill(r as u32);
    }
    let total_weight: f64 = pairs.values.iter().map(|&c| f64::from(c)).sum();
    let steps = ((cfg.epochs * total_weight / cfg.batch_size as f64).ceil() as usize).clamp(1, cfg.max_steps.max(1));
    let steps = warm.map_or(steps, |w| ((steps as f64 * w.steps_share).ceil() as usize).clamp(1, steps));
    let device = Device::flex().autodiff();
    let mut input = Table::new(init, d);
    let mut output = Table::new(init_out, d);
    let (b, k) = (cfg.batch_size, cfg.negatives);
    progress.start("embeddings", steps as u64);
    let mut centers = Vec::with_capacity(b);
    let mut targets = Vec::with_capacity(b * (k + 1)); // contexts, then negatives
    for step in 0..steps {
        centers.clear();
        targets.clear();
        for _ in 0..b {
            let p = pair_sampler.sample(&mut rng);
            centers.push(pair_rows[p]);
            targets.push(pairs.indices[p]);
        }
        for _ in 0..b * k {
            targets.push(neg_sampler.sample(&mut rng) as u32);
        }
        let c = input.gather(&centers, &device);
        let o = output.gather(&targets[..b], &device);
        let neg = output.gather(&targets[b..], &device);
        let mut grads = loss(c.clone(), o.clone(), neg.clone(), k).backward();
        input.accumulate(&centers, &gradient(&c, &mut grads)?);
        output.accumulate(&targets[..b], &gradient(&o, &mut grads)?);
        output.accumulate(&targets[b..], &gradient(&neg, &mut grads)?);
        // linear decay to a tenth of the rate
        let lr = cfg.learning_rate * (1.0 - 0.9 * step as f64 / steps as f64);
        input.update(lr as f32, step as i32 + 1);
        output.update(lr as f32, step as i32 + 1);
        progress.advance(1);
    }
    progress.finish();
    Ok((input.into_array()?, output.into_array()?))
}

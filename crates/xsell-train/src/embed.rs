//! Item embeddings: skip-gram with negative sampling over co-purchase pairs, in burn.
//!
//! Each step samples `batch_size` (item, co-purchased item) pairs with probability proportional
//! to `count^0.75` from the aggregate pair table, and `negatives` items per pair from the
//! unigram distribution raised to 0.75. `input(i) · output(j)` then scores "j is bought with i";
//! `cos(input(i), input(j))` scores "i and j appear in the same contexts" (often substitutes).

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xsell_core::Csr;

use crate::{Progress, Result, TrainConfig, TrainError};

/// Input and output embedding tables.
#[derive(Module, Debug)]
struct SkipGram {
    input: Param<Tensor<2>>,
    output: Param<Tensor<2>>,
}

impl SkipGram {
    fn loss(&self, centers: Tensor<1, Int>, contexts: Tensor<1, Int>, negatives: Tensor<1, Int>, k: usize) -> Tensor<1> {
        let c = self.input.val().select(0, centers);
        let [b, d] = c.dims();
        let o = self.output.val().select(0, contexts);
        let pos = (c.clone() * o).sum_dim(1);
        let n = self.output.val().select(0, negatives).reshape([b, k, d]);
        let neg = (c.unsqueeze_dim::<3>(1) * n).sum_dim(2).reshape([b, k]);
        let pos_term = log_sigmoid(pos).mean();
        let neg_term = log_sigmoid(neg.neg()).sum_dim(1).mean();
        (pos_term + neg_term).neg()
    }
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

fn tensor_to_array(t: Tensor<2>) -> Result<Array2<f32>> {
    let [r, c] = t.dims();
    let v = t.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Tensor(format!("{e:?}")))?;
    Array2::from_shape_vec((r, c), v).map_err(|e| TrainError::Tensor(e.to_string()))
}

fn ints(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// Trains input and output embeddings (items × `cfg.dim`) from pair counts and item counts.
pub fn train_embeddings(
    pairs: &Csr,
    item_counts: &[f32],
    cfg: &TrainConfig,
    progress: &mut dyn Progress,
) -> Result<(Array2<f32>, Array2<f32>)> {
    let n = item_counts.len();
    let d = cfg.dim;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let init: Vec<f32> = (0..n * d).map(|_| (rng.random::<f32>() - 0.5) / d as f32).collect();
    let device = Device::flex().autodiff();
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
    let mut model = SkipGram {
        input: Param::from_tensor(Tensor::from_data(TensorData::new(init, [n, d]), &device).require_grad()),
        output: Param::from_tensor(Tensor::zeros([n, d], &device).require_grad()),
    };
    let mut optim = AdamConfig::new().init();
    let (b, k) = (cfg.batch_size, cfg.negatives);
    progress.start("embeddings", steps as u64);
    for step in 0..steps {
        let mut centers = Vec::with_capacity(b);
        let mut contexts = Vec::with_capacity(b);
        let mut negs = Vec::with_capacity(b * k);
        for _ in 0..b {
            let p = pair_sampler.sample(&mut rng);
            centers.push(i64::from(pair_rows[p]));
            contexts.push(i64::from(pairs.indices[p]));
            for _ in 0..k {
                negs.push(neg_sampler.sample(&mut rng) as i64);
            }
        }
        let loss = model.loss(ints(centers, &device), ints(contexts, &device), ints(negs, &device), k);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // linear decay to a tenth of the rate
        let lr = cfg.learning_rate * (1.0 - 0.9 * step as f64 / steps as f64);
        model = optim.step(lr, model, grads);
        progress.advance(1);
    }
    progress.finish();
    Ok((tensor_to_array(model.input.val())?, tensor_to_array(model.output.val())?))
}

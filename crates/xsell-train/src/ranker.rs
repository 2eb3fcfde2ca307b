//! The ranker: a scorer over the core's features (linear, optionally plus one hidden ReLU
//! layer), fitted with a sampled-softmax loss in burn, and Platt calibration of its scores.
//!
//! Each training query contributes its target (row 0) and a fixed number of negatives; the loss
//! is the negative log of the target's softmax share among them, which optimises the ranking
//! directly. The scorer stays small so that serving is a couple of matrix products per request.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use ndarray::Array3;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xsell_core::model::{N_FEATURES, Ranker};

use crate::{Progress, Result, TrainError};

/// Linear part plus an optional hidden ReLU layer (see [`Ranker`]).
#[derive(Module, Debug)]
struct Scorer {
    w: Param<Tensor<2>>,
    hidden: Option<Hidden>,
}

#[derive(Module, Debug)]
struct Hidden {
    w1: Param<Tensor<2>>,
    b1: Param<Tensor<1>>,
    w2: Param<Tensor<2>>,
}

impl Scorer {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let linear = x.clone().matmul(self.w.val());
        match &self.hidden {
            Some(h) => linear + relu(x.matmul(h.w1.val()) + h.b1.val().unsqueeze::<2>()).matmul(h.w2.val()),
            None => linear,
        }
    }
}

/// Settings of [`fit_ranker`].
#[derive(Debug, Clone, Copy)]
pub struct RankerFit {
    /// Passes over the queries.
    pub epochs: usize,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Features forced to zero weight (for ablations).
    pub disabled: [bool; N_FEATURES],
    /// Hidden ReLU units (0: a linear ranker).
    pub hidden: usize,
}

/// Ranker examples, standardized once into a burn tensor that every fit on them shares.
pub struct RankerData {
    x: Tensor<3>,
    mask: Tensor<2>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl RankerData {
    /// Takes `examples`: queries × candidates × features, each query's target in candidate row
    /// 0 and its first `valid[query]` rows real (the rest is padding, left out of the
    /// standardization and masked out of the softmax).
    pub fn new(mut examples: Array3<f32>, valid: &[usize]) -> Result<Self> {
        let (q, c, nf) = examples.dim();
        if valid.len() != q || valid.iter().any(|&v| v == 0 || v > c) {
            return Err(TrainError::Tensor("every ranker query needs between 1 and all of its candidate rows valid".into()));
        }
        if q == 0 || c < 2 {
            return Err(TrainError::NotEnoughData("no ranker query (the validation orders have no basket of two items or more)".into()));
        }
        if nf != N_FEATURES {
            return Err(TrainError::Tensor(format!("ranker examples have {nf} features, expected {N_FEATURES}")));
        }
        // standardization over every valid candidate row, in place
        let (mut sum, mut sum_sq, mut count) = (vec![0f64; nf], vec![0f64; nf], 0f64);
        for (e, &v) in examples.outer_iter().zip(valid) {
            for row in e.outer_iter().take(v) {
                for (f, &x) in row.iter().enumerate() {
                    sum[f] += f64::from(x);
                    sum_sq[f] += f64::from(x) * f64::from(x);
                }
                count += 1.0;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std: Vec<f32> = sum
            .iter()
            .zip(&sum_sq)
            .map(|(s, s2)| {
                let var = (s2 / count - (s / count).powi(2)).max(0.0);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        let mut mask = Vec::with_capacity(q * c);
        for (mut e, &v) in examples.outer_iter_mut().zip(valid) {
            for (k, mut row) in e.outer_iter_mut().enumerate() {
                let real = k < v;
                mask.push(if real { 0.0f32 } else { -1e9 });
                row.iter_mut().zip(mean.iter().zip(&std)).for_each(|(x, (&m, &s))| *x = if real { (*x - m) / s } else { 0.0 });
            }
        }
        if !examples.is_standard_layout() {
            examples = examples.as_standard_layout().into_owned();
        }
        let (data, _) = examples.into_raw_vec_and_offset(); // standard layout: offset 0, no copy
        let device = Device::flex().autodiff();
        let x = Tensor::from_data(TensorData::new(data, [q, c, nf]), &device);
        let mask = Tensor::from_data(TensorData::new(mask, [q, c]), &device);
        Ok(RankerData { x, mask, mean, std })
    }
}

/// Fits the scorer on `data`.
pub fn fit_ranker(data: &RankerData, fit: &RankerFit, progress: &mut dyn Progress) -> Result<Ranker> {
    let [q, c, _] = data.x.dims();
    let device = data.x.device();
    let x_all = &data.x;
    let mask_all = &data.mask;
    // disabled features are zeroed batch by batch
    let keep: Option<Tensor<2>> = fit.disabled.iter().any(|&d| d).then(|| {
        let m: Vec<f32> = fit.disabled.iter().map(|&d| if d { 0.0 } else { 1.0 }).collect();
        Tensor::from_data(TensorData::new(m, [1, N_FEATURES]), &device)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(fit.seed);
    let h = fit.hidden;
    let hidden = (h > 0).then(|| {
        // He-uniform initialization from the seeded generator, so a fit is reproducible
        let a = (6.0 / N_FEATURES as f32).sqrt();
        let w1: Vec<f32> = (0..N_FEATURES * h).map(|_| rng.random_range(-a..a)).collect();
        Hidden {
            w1: Param::from_tensor(Tensor::from_data(TensorData::new(w1, [N_FEATURES, h]), &device)),
            b1: Param::from_tensor(Tensor::zeros([h], &device)),
            w2: Param::from_tensor(Tensor::zeros([h, 1], &device)),
        }
    });
    let mut model = Scorer { w: Param::from_tensor(Tensor::zeros([N_FEATURES, 1], &device)), hidden };
    let mut optim = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(1e-4))).init();
    let batch = 256.min(q);
    let batches_per_epoch = q.div_ceil(batch);
    progress.start("ranker", (fit.epochs * batches_per_epoch) as u64);
    let mut order: Vec<i64> = (0..q as i64).collect();
    for epoch in 0..fit.epochs {
        order.shuffle(&mut rng);
        let lr = 0.05 * (1.0 - 0.9 * epoch as f64 / fit.epochs.max(1) as f64);
        for chunk in order.chunks(batch) {
            let idx = Tensor::<1, Int>::from_data(TensorData::new(chunk.to_vec(), [chunk.len()]), &device);
            let mut xb = x_all.clone().select(0, idx.clone()).reshape([chunk.len() * c, N_FEATURES]);
            if let Some(k) = &keep {
                xb = xb * k.clone();
            }
            let scores = model.forward(xb).reshape([chunk.len(), c]) + mask_all.clone().select(0, idx);
            let loss = log_softmax(scores, 1).slice([0..chunk.len(), 0..1]).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            progress.advance(1);
        }
    }
    progress.finish();
    let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().map_err(|e| TrainError::Tensor(format!("{e:?}")));
    // disabled features were zero in every batch: their weights are exactly 0
    let per_feature = |w: Vec<f32>| -> Vec<f32> {
        w.chunks(N_FEATURES).flat_map(|row| row.iter().zip(&fit.disabled).map(|(&w, &off)| if off { 0.0 } else { w })).collect()
    };
    let mut ranker = Ranker::single(0);
    (ranker.mean, ranker.scale, ranker.weights) = (data.mean.clone(), data.std.clone(), per_feature(values(model.w.val())?));
    if let Some(hid) = &model.hidden {
        // stored units × features
        ranker.hidden = per_feature(values(hid.w1.val().transpose())?);
        ranker.hidden_bias = values(hid.b1.val().unsqueeze::<2>())?;
        ranker.hidden_out = values(hid.w2.val())?;
    }
    Ok(ranker)
}

/// Platt scaling: `(a, b)` such that `sigmoid(a·s + b)` matches the labels, fitted by damped
/// Newton steps on Platt's smoothed targets over standardized scores (so nearly separable or
/// nearly constant scores cannot blow the parameters up).
pub fn fit_platt(scores: &[f32], labels: &[bool]) -> (f32, f32) {
    let pos = labels.iter().filter(|&&y| y).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return (1.0, if pos == 0.0 { -10.0 } else { 10.0 });
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let sd = (scores.iter().map(|&s| (f64::from(s) - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-9);
    let z: Vec<f64> = scores.iter().map(|&s| (f64::from(s) - mean) / sd).collect();
    let (t_pos, t_neg) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let target = |y: bool| if y { t_pos } else { t_neg };
    // cross-entropy against the smoothed targets, with a weak ridge on the slope
    let loss = |a: f64, b: f64| -> f64 {
        let ce: f64 = z
            .iter()
            .zip(labels)
            .map(|(&s, &y)| {
                let m = a * s + b;
                let t = target(y);
                // log(1 + e^m) − t·m, computed stably
                m.max(0.0) + (-m.abs()).exp().ln_1p() - t * m
            })
            .sum();
        ce + 1e-3 * a * a
    };
    let (mut a, mut b) = (1.0f64, ((pos + 1.0) / (neg + 1.0)).ln());
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (2e-3 * a, 0.0, 2e-3, 0.0, 1e-9);
        for (&s, &y) in z.iter().zip(labels) {
            let p = 1.0 / (1.0 + (-(a * s + b)).exp());
            let (g, h) = (p - target(y), (p * (1.0 - p)).max(1e-12));
            ga += g * s;
            gb += g;
            haa += h * s * s;
            hab += h * s;
            hbb += h;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-6 {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if l <= current {
                (a, b, current, improved) = (na, nb, l, true);
                break;
            }
            step *= 0.5;
        }
        if !improved || (step * da).abs() < 1e-10 && (step * db).abs() < 1e-10 {
            break;
        }
    }
    // back to raw scores: a·(s − mean)/sd + b
    ((a / sd) as f32, (b - a * mean / sd) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_stays_finite_on_separable_and_constant_scores() {
        let scores: Vec<f32> = (0..200).map(|k| k as f32 / 1000.0).collect();
        let labels: Vec<bool> = (0..200).map(|k| k >= 190).collect(); // perfectly separable
        let (a, b) = fit_platt(&scores, &labels);
        assert!(a.is_finite() && b.is_finite() && a > 0.0, "a = {a}, b = {b}");
        let p = |s: f32| xsell_core::model::sigmoid(a * s + b);
        assert!(p(0.0) < 0.05 && p(0.199) > 0.5, "p(0) = {}, p(0.199) = {}", p(0.0), p(0.199));
        let (a, b) = fit_platt(&[0.3; 50], &(0..50).map(|k| k < 5).collect::<Vec<_>>());
        let rate = xsell_core::model::sigmoid(a * 0.3 + b);
        assert!((rate - 0.1).abs() < 0.03, "constant scores get the base rate, got {rate}");
    }

    #[test]
    fn the_ranker_learns_which_feature_finds_the_target() {
        // feature 4 (EASE) puts the target first; the others are noise; rows past `valid` are padding
        let (q, c) = (64, 12);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut x = Array3::<f32>::zeros((q, c, N_FEATURES));
        for mut e in x.outer_iter_mut() {
            e.mapv_inplace(|_| rng.random_range(0.0..1.0));
            e[[0, 4]] += 1.0;
        }
        let valid: Vec<usize> = (0..q).map(|k| if k % 2 == 0 { c } else { c - 4 }).collect();
        let fit = RankerFit { epochs: 40, seed: 1, disabled: [false; N_FEATURES], hidden: 0 };
        let data = RankerData::new(x, &valid).unwrap();
        let r = fit_ranker(&data, &fit, &mut crate::NoProgress).unwrap();
        let best = (0..N_FEATURES).max_by(|&a, &b| r.weights[a].total_cmp(&r.weights[b])).unwrap();
        assert_eq!(best, 4, "{:?}", r.weights);
        let mut disabled = [false; N_FEATURES];
        disabled[4] = true;
        let r = fit_ranker(&data, &RankerFit { disabled, hidden: 4, ..fit }, &mut crate::NoProgress).unwrap();
        assert_eq!(r.weights[4], 0.0);
        assert_eq!((r.n_hidden(), r.hidden.len()), (4, 4 * N_FEATURES));
        assert!(r.validate().is_ok());
    }
}

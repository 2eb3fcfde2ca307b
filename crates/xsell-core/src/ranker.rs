//! Scoring: the learned ranker over the features, and its calibration.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::features::N_FEATURES;
use crate::{Error, Result};

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

/// Logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

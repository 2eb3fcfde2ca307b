//! EASE (Steck, 2019): a closed-form item-item regression.
//!
//! `B = I − P · diag(1 / diag(P))` with `P = (G + λI)⁻¹`, where `G` is the item-item Gram
//! matrix (orders containing both items; the diagonal is the item's order count). `B[i, j]` is
//! how much having `i` in a basket predicts `j`, with the other basket items explained away,
//! which is what separates it from raw co-occurrence.
//!
//! The inverse is dense and cubic, so it covers only the `ease_items` most-bought items (the
//! aggregate pass builds their Gram, [`xsell_core::aggregate::Aggregates::gram`]); the served
//! model keeps the strongest entries of each row ([`sparsify`]). The inversion is a blocked
//! Gauss-Jordan sweep whose work is all matrix products (ndarray's `general_mat_mul`), split
//! over the rayon pool by rows.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xsell_core::metrics::{Evaluator, QueryTags};
use xsell_core::{Csr, ItemIx, top_k};

use crate::{Result, TrainError};

/// Candidate regularizations, as multiples of the mean Gram diagonal (the mean order count of
/// the covered items): the best one on the validation queries is kept.
pub const LAMBDA_GRID: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

/// EASE weights over the covered items.
#[derive(Debug, Clone)]
pub struct Ease {
    /// The regularization used, as a multiple of the mean Gram diagonal.
    pub alpha: f64,
    /// The regularization used.
    pub lambda: f64,
    /// `b[a, b]` between the covered items `a` and `b` (zero diagonal).
    pub b: Array2<f32>,
}

/// One validation query over covered-item positions: basket positions and the target's
/// position (`None` when the target is not covered).
pub type PosQuery = (Vec<usize>, Option<usize>);

/// How one λ did on the validation queries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LambdaTrial {
    /// λ as a multiple of the mean Gram diagonal.
    pub alpha: f64,
    /// λ.
    pub lambda: f64,
    /// hit@10.
    pub hit10: f64,
    /// mrr@20.
    pub mrr20: f64,
}

/// `(G + λI)⁻¹` with λ = `alpha` × [`diagonal_scale`], and λ.
fn regularized_inverse(gram: &Array2<f32>, alpha: f64) -> Result<(Array2<f64>, f64)> {
    let lambda = alpha * diagonal_scale(gram);
    let mut p = gram.mapv(f64::from);
    p.diag_mut().mapv_inplace(|v| v + lambda);
    spd_inverse(&mut p)?;
    Ok((p, lambda))
}

/// `B[a, c] = −P[a, c] / P[c, c]` off the diagonal, 0 on it.
fn weight(p: &Array2<f64>, a: usize, c: usize) -> f32 {
    if a == c { 0.0 } else { (-p[[a, c]] / p[[c, c]]) as f32 }
}

/// Fits EASE on a Gram matrix with regularization λ = `alpha` × [`diagonal_scale`].
pub fn fit(gram: &Array2<f32>, alpha: f64) -> Result<Ease> {
    let (p, lambda) = regularized_inverse(gram, alpha)?;
    let b = Array2::from_shape_fn(p.dim(), |(a, c)| weight(&p, a, c));
    Ok(Ease { alpha, lambda, b })
}

/// Mean of the Gram diagonal: the scale the λ grid is relative to.
pub fn diagonal_scale(gram: &Array2<f32>) -> f64 {
    let m = gram.nrows().max(1) as f64;
    (gram.diag().iter().map(|&v| f64::from(v)).sum::<f64>() / m).max(1.0)
}

/// Chooses λ: fits EASE at each λ of `grid` (multiples of [`diagonal_scale`]) on the Gram of
/// the `search_items` most-bought items (the leading block: the cubic cost stays bounded) and
/// keeps the best hit@10 + mrr@20 on `queries` (ties: the larger λ). Returns the chosen λ as a
/// multiple of the *whole* Gram's diagonal scale, and the trials.
pub fn choose(gram: &Array2<f32>, grid: &[f64], queries: &[PosQuery], search_items: usize) -> Result<(f64, Vec<LambdaTrial>)> {
    let m = gram.nrows().min(search_items.max(1));
    let sub = gram.slice(s![..m, ..m]).to_owned();
    let sub_queries: Vec<PosQuery> =
        queries.iter().map(|(basket, target)| (basket.iter().copied().filter(|&a| a < m).collect(), target.filter(|&t| t < m))).collect();
    let mut best: Option<(f64, f64)> = None;
    let mut trials = Vec::new();
    for &alpha in grid {
        let ease = fit(&sub, alpha)?;
        let (hit10, mrr20) = judge(&ease, &sub_queries);
        trials.push(LambdaTrial { alpha, lambda: ease.lambda, hit10, mrr20 });
        if best.is_none_or(|(score, _)| hit10 + mrr20 >= score) {
            best = Some((hit10 + mrr20, ease.lambda));
        }
    }
    let (_, lambda) = best.ok_or_else(|| TrainError::Config { name: "ease_lambda", reason: "the λ grid is empty".into() })?;
    // the absolute λ carries over to the whole Gram
    Ok((lambda / diagonal_scale(gram), trials))
}

/// hit@10 and mrr@20 of EASE alone on `queries`.
pub fn judge(ease: &Ease, queries: &[PosQuery]) -> (f64, f64) {
    let m = ease.b.nrows();
    let ranked: Vec<Vec<String>> = queries
        .par_iter()
        .map(|(basket, _)| {
            let mut score = Array1::<f32>::zeros(m);
            for &a in basket {
                score += &ease.b.row(a);
            }
            top_k(m, 20, |c| score[c], |c| !basket.contains(&c)).iter().map(|c| c.to_string()).collect()
        })
        .collect();
    let mut ev = Evaluator::new();
    for (r, (_, target)) in ranked.iter().zip(queries) {
        let t = target.map_or_else(|| "-".to_string(), |t| t.to_string());
        ev.add(r, None, &t, QueryTags::default());
    }
    let m = ev.finish(m);
    (m.hit10, m.mrr20)
}

/// Fits EASE like [`fit`] and keeps only [`sparsify`]'s strongest weights, computed straight
/// from the inverse (the dense weight matrix is never built). Returns them and λ.
pub fn fit_sparse(gram: &Array2<f32>, alpha: f64, items: &[ItemIx], n_items: usize, keep: usize) -> Result<(Csr, f64)> {
    let (p, lambda) = regularized_inverse(gram, alpha)?;
    Ok((strongest(p.nrows(), |a, c| weight(&p, a, c), items, n_items, keep), lambda))
}

/// The strongest `keep` weights (by magnitude) of each covered row, as an `n_items` × `n_items`
/// sparse matrix; `items[a]` is the item of covered position `a`.
pub fn sparsify(ease: &Ease, items: &[ItemIx], n_items: usize, keep: usize) -> Csr {
    strongest(ease.b.nrows(), |a, c| ease.b[[a, c]], items, n_items, keep)
}

/// [`sparsify`] over any `m` × `m` weight function.
fn strongest(m: usize, weight: impl Fn(usize, usize) -> f32 + Sync, items: &[ItemIx], n_items: usize, keep: usize) -> Csr {
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_items];
    let kept: Vec<Vec<(u32, f32)>> = (0..m)
        .into_par_iter()
        .map(|a| {
            let mut r: Vec<(u32, f32)> = (0..m).map(|c| (items[c], weight(a, c))).filter(|(_, v)| *v != 0.0).collect();
            if r.len() > keep {
                r.select_nth_unstable_by(keep, |x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
                r.truncate(keep);
            }
            r
        })
        .collect();
    for (a, r) in kept.into_iter().enumerate() {
        rows[items[a] as usize] = r;
    }
    Csr::from_rows(rows)
}

const BLOCK: usize = 192;

/// Inverts a symmetric positive definite matrix in place.
pub fn spd_inverse(a: &mut Array2<f64>) -> Result<()> {
    let n = a.nrows();
    if a.ncols() != n {
        return Err(TrainError::Tensor(format!("cannot invert a {}×{} matrix", n, a.ncols())));
    }
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + BLOCK).min(n);
        let mut p = a.slice(s![k0..k1, k0..k1]).to_owned();
        small_inverse(&mut p)?;
        let c = a.slice(s![.., k0..k1]).to_owned();
        // new pivot rows: P · A[K, :]
        let mut r = Array2::<f64>::zeros((k1 - k0, n));
        general_mat_mul(1.0, &p, &a.slice(s![k0..k1, ..]), 0.0, &mut r);
        let (top, rest) = a.view_mut().split_at(Axis(0), k0);
        let (_, bottom) = rest.split_at(Axis(0), k1 - k0);
        let (c_top, rest) = c.view().split_at(Axis(0), k0);
        let (_, c_bottom) = rest.split_at(Axis(0), k1 - k0);
        rayon::join(|| sweep_rows(top, c_top, r.view(), p.view(), k0), || sweep_rows(bottom, c_bottom, r.view(), p.view(), k0));
        a.slice_mut(s![k0..k1, ..]).assign(&r);
        a.slice_mut(s![k0..k1, k0..k1]).assign(&p);
        k0 = k1;
    }
    Ok(())
}

/// `A[o, :] −= C[o] · R`, then `A[o, K] = −C[o] · P`, in row chunks over the rayon pool.
fn sweep_rows(mut a: ArrayViewMut2<'_, f64>, c: ArrayView2<'_, f64>, r: ArrayView2<'_, f64>, p: ArrayView2<'_, f64>, k0: usize) {
    const CHUNK: usize = 512;
    if a.nrows() > CHUNK {
        let mid = a.nrows() / 2;
        let (a1, a2) = a.split_at(Axis(0), mid);
        let (c1, c2) = c.split_at(Axis(0), mid);
        rayon::join(|| sweep_rows(a1, c1, r, p, k0), || sweep_rows(a2, c2, r, p, k0));
        return;
    }
    if a.nrows() == 0 {
        return;
    }
    general_mat_mul(-1.0, &c, &r, 1.0, &mut a);
    let mut ak = a.slice_mut(s![.., k0..k0 + p.nrows()]);
    general_mat_mul(-1.0, &c, &p, 0.0, &mut ak);
}

/// Unblocked Gauss-Jordan inverse of a small SPD block.
fn small_inverse(a: &mut Array2<f64>) -> Result<()> {
    let n = a.nrows();
    for k in 0..n {
        let d = a[[k, k]];
        if !(d.is_finite() && d > 1e-12) {
            return Err(TrainError::Tensor("the regularized Gram matrix is not positive definite".into()));
        }
        let inv = 1.0 / d;
        a[[k, k]] = inv;
        for j in 0..n {
            if j != k {
                a[[k, j]] *= inv;
            }
        }
        for i in 0..n {
            if i == k {
                continue;
            }
            let f = a[[i, k]];
            if f == 0.0 {
                continue;
            }
            for j in 0..n {
                if j != k {
                    a[[i, j]] -= f * a[[k, j]];
                }
            }
            a[[i, k]] = -f * inv;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_matches_identity() {
        // a random SPD matrix bigger than a block: X^T X + I
        let n = 2 * BLOCK + 37;
        let x = Array2::from_shape_fn((n + 5, n), |(i, j)| (((i * 31 + j * 17) % 23) as f64 - 11.0) / 7.0);
        let g = x.t().dot(&x) + Array2::<f64>::eye(n);
        let mut inv = g.clone();
        spd_inverse(&mut inv).unwrap();
        let id = g.dot(&inv);
        let err = (&id - &Array2::<f64>::eye(n)).iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(err < 1e-8, "max |G·G⁻¹ − I| = {err}");
    }

    #[test]
    fn ease_matches_its_closed_form_and_keeps_the_strongest_weights() {
        // three items: 0 and 1 always together, 2 alone
        let gram = ndarray::arr2(&[[10.0f32, 8.0, 1.0], [8.0, 9.0, 1.0], [1.0, 1.0, 5.0]]);
        let ease = fit(&gram, 0.5).unwrap();
        let lambda = 0.5 * 8.0; // 0.5 × the mean diagonal
        assert!((ease.lambda - lambda).abs() < 1e-12);
        let mut p = gram.mapv(f64::from) + Array2::<f64>::eye(3) * lambda;
        spd_inverse(&mut p).unwrap();
        for a in 0..3 {
            assert_eq!(ease.b[[a, a]], 0.0);
            for c in (0..3).filter(|&c| c != a) {
                assert!((f64::from(ease.b[[a, c]]) + p[[a, c]] / p[[c, c]]).abs() < 1e-6);
            }
        }
        assert!(ease.b[[0, 1]] > ease.b[[0, 2]], "the pair bought together weighs more");
        let csr = sparsify(&ease, &[4, 0, 2], 5, 1);
        assert_eq!(csr.row(4).0, [0], "row of item 4 keeps its strongest weight, to item 0");
        assert!(csr.row(1).0.is_empty() && csr.n_rows() == 5);
        let (direct, l) = fit_sparse(&gram, 0.5, &[4, 0, 2], 5, 1).unwrap();
        assert_eq!((direct, l), (csr, ease.lambda), "the direct sparse fit keeps the same weights");
    }

    #[test]
    fn lambda_is_chosen_on_the_queries() {
        let gram = ndarray::arr2(&[[10.0f32, 8.0, 1.0], [8.0, 9.0, 1.0], [1.0, 1.0, 5.0]]);
        let queries: Vec<PosQuery> = vec![(vec![0], Some(1)), (vec![1], Some(0)), (vec![2], None)];
        let (alpha, trials) = choose(&gram, &LAMBDA_GRID, &queries, 2).unwrap();
        assert_eq!(trials.len(), LAMBDA_GRID.len());
        assert!(trials.iter().all(|t| t.hit10 > 0.6), "{trials:?}");
        assert!(alpha > 0.0 && alpha.is_finite());
    }

    #[test]
    #[ignore = "timing probe: cargo test --release -p xsell-train ease::tests::inverse_speed -- --ignored --nocapture"]
    fn inverse_speed() {
        let n: usize = std::env::var("XSELL_N").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
        let x = Array2::from_shape_fn((n, n), |(i, j)| if (i * 7 + j * 13) % 97 == 0 { 1.0 } else { 0.0 });
        let mut g = x.t().dot(&x) + Array2::<f64>::eye(n) * 20.0;
        let t = std::time::Instant::now();
        spd_inverse(&mut g).unwrap();
        eprintln!("n = {n}: {:.2} s", t.elapsed().as_secs_f64());
    }
}

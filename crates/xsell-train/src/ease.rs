//! EASE (Steck, 2019) and its higher-order form (Steck & Liang, 2021): closed-form item-item
//! regression.
//!
//! Plain EASE: `B = I − P · diag(1 / diag(P))` with `P = (G + λI)⁻¹`, where `G` is the
//! item-item Gram matrix (orders containing both items; the diagonal is the item's order
//! count). `B[i, j]` is how much having `i` in a basket predicts `j`, with the other basket
//! items explained away, which is what separates it from raw co-occurrence.
//!
//! Like any regression it has an intercept: an always-on input (a basket column of ones) whose
//! weights are each item's base rate, regularized like an item and never a target. Without
//! it, the item weights must carry the base rates too; with it, they say only what the basket
//! adds (on the groceries log it raised validation hit@10 at every λ of the grid).
//!
//! Higher-order EASE adds the most co-bought item *pairs* as extra inputs ("both `a` and `b`
//! are in the basket"), so a pair can predict what neither item predicts alone. Each target
//! `j` is its own ridge regression over the items and pairs, with `j` itself and every pair
//! containing `j` held at zero. With `P = (G + Λ)⁻¹` over the extended Gram, the unconstrained
//! solution is `w* = e_j − λ P[:, j]`, and the constraints on the rows `S` cost one small solve:
//! `w = w* − P[:, S] · P[S, S]⁻¹ · w*[S]` (for `S = {j}` this is plain EASE's column).
//!
//! The inverse is dense and cubic, so it covers only the `ease_items` most-bought items and
//! at most `ease_pairs` pairs (the aggregate pass counts their Gram,
//! [`xsell_core::aggregate::Aggregates::extended_gram`]); the served model keeps the strongest
//! entries of each row ([`fit_sparse`]); the items beyond it get rows from blocks of
//! co-purchase-connected items, each its own small EASE ([`fit_tail`]). The inversion is a blocked Cholesky
//! factorisation, triangular inverse and product ([`spd_inverse`]) whose work is nearly all matrix products
//! (ndarray's `general_mat_mul`), split over the rayon pool.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xsell_core::model::{PairWeights, pair_partners};
use xsell_core::{Csr, ItemIx, top_k};

use crate::ranking::{clearly_better, outcome};
use crate::{Result, TrainError};

/// Candidate item regularizations, as multiples of the mean item Gram diagonal (the mean
/// order count of the covered items): the best one on the validation queries is kept.
pub const LAMBDA_GRID: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

/// Candidate pair regularizations, in the same unit as [`LAMBDA_GRID`].
pub const PAIR_LAMBDA_GRID: [f64; 4] = [10.0, 3.0, 1.0, 0.3];

/// Layout of every Gram and inverse here: the `m` covered items, then the always-on input at
/// position `m`, then the pairs at `m + 1 + q`.
///
/// EASE weights over the covered items, the always-on input and the pairs.
#[derive(Debug, Clone)]
pub struct Ease {
    /// The item regularization used, as a multiple of the mean item Gram diagonal.
    pub alpha: f64,
    /// The item regularization used.
    pub lambda: f64,
    /// The pair regularization used, as a multiple of the mean item Gram diagonal.
    pub pair_alpha: f64,
    /// The pairs, as covered-item positions `(a, b)`, `a < b`.
    pub pairs: Vec<(u32, u32)>,
    /// `b[r, c]`: the weight of input `r` (a covered item, the always-on input `m`, or pair
    /// `r − m − 1`) for the covered item `c` (zero where `r` is `c` or a pair holding `c`).
    pub b: Array2<f32>,
}

/// One validation query over covered-item positions: basket positions and the target's
/// position (`None` when the target is not covered).
pub type PosQuery = (Vec<usize>, Option<usize>);

/// How one regularization did on the validation queries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LambdaTrial {
    /// The most-bought items judged on (the leading block).
    #[serde(default)]
    pub items: usize,
    /// λ as a multiple of the mean item Gram diagonal.
    pub alpha: f64,
    /// λ.
    pub lambda: f64,
    /// Pairs used (0: plain EASE).
    #[serde(default)]
    pub pairs: usize,
    /// The pairs' λ as a multiple of the mean item Gram diagonal.
    #[serde(default)]
    pub pair_alpha: f64,
    /// hit@10.
    pub hit10: f64,
    /// mrr@20.
    pub mrr20: f64,
}

/// What validation chose.
#[derive(Debug, Clone)]
pub struct Choice {
    /// Item λ as a multiple of the whole Gram's mean item diagonal.
    pub alpha: f64,
    /// Pairs to use (the most co-bought first).
    pub pairs: usize,
    /// Pair λ, in the unit of `alpha`.
    pub pair_alpha: f64,
    /// Every candidate tried.
    pub trials: Vec<LambdaTrial>,
}

/// The regularized inverse of an extended Gram and, per target item, its constrained rows
/// `S` and the Lagrange terms `P[S, S]⁻¹ · w*[S]`.
struct Solved {
    p: Array2<f64>,
    lambda: f64,
    cols: Vec<(Vec<usize>, Vec<f64>)>,
}

impl Solved {
    /// `(G + Λ)⁻¹` of an extended Gram (`m` items, the always-on input, then `pairs`), λ on
    /// the items' and the always-on input's diagonal and `pair_lambda` on the pairs'.
    fn new(gram: Array2<f32>, m: usize, pairs: &[(u32, u32)], lambda: f64, pair_lambda: f64) -> Result<Self> {
        if gram.nrows() != m + 1 + pairs.len() {
            return Err(TrainError::Tensor(format!(
                "a Gram of {} rows for {m} items, the always-on input and {} pairs",
                gram.nrows(),
                pairs.len()
            )));
        }
        Self::with_inverse(regularized_inverse(gram, m + 1, lambda, pair_lambda)?, m, pairs, lambda)
    }

    /// Like [`Solved::new`], from the inputs' (items and always-on) regularized inverse
    /// `ai` = `(G_inputs + λI)⁻¹` and
    /// the pairs' Gram rows `[C | D]`, by the Schur complement `S = D + λ_p I − C · ai · Cᵀ`:
    /// `P = [[ai + K S⁻¹ Kᵀ, −K S⁻¹], [−S⁻¹ Kᵀ, S⁻¹]]` with `K = ai · Cᵀ` (given, it depends
    /// only on the pairs). A new pair λ then costs matrix products, not a new inverse.
    fn bordered(
        ai: &Array2<f64>,
        k: &Array2<f64>,
        pair_gram: &Array2<f32>,
        pairs: &[(u32, u32)],
        lambda: f64,
        pair_lambda: f64,
    ) -> Result<Self> {
        // `m` here counts the always-on input with the items
        let (m, n_pairs) = (ai.nrows(), pairs.len());
        let c = pair_gram.slice(s![.., ..m]).mapv(f64::from);
        let mut schur = pair_gram.slice(s![.., m..]).mapv(f64::from);
        schur.diag_mut().mapv_inplace(|v| v + pair_lambda);
        general_mat_mul(-1.0, &c, k, 1.0, &mut schur);
        spd_inverse(&mut schur)?;
        let k_si = k.dot(&schur);
        let mut p = Array2::<f64>::zeros((m + n_pairs, m + n_pairs));
        p.slice_mut(s![..m, ..m]).assign(ai);
        general_mat_mul(1.0, &k_si, &k.t(), 1.0, &mut p.slice_mut(s![..m, ..m]));
        p.slice_mut(s![..m, m..]).assign(&(-&k_si));
        p.slice_mut(s![m.., ..m]).assign(&(-&k_si.t()));
        p.slice_mut(s![m.., m..]).assign(&schur);
        Self::with_inverse(p, m - 1, pairs, lambda)
    }

    /// The constrained columns over an extended inverse `p` (`m` items, the always-on input,
    /// then `pairs`).
    fn with_inverse(p: Array2<f64>, m: usize, pairs: &[(u32, u32)], lambda: f64) -> Result<Self> {
        let mut constrained: Vec<Vec<usize>> = (0..m).map(|j| vec![j]).collect();
        for (q, &(a, b)) in pairs.iter().enumerate() {
            constrained[a as usize].push(m + 1 + q);
            constrained[b as usize].push(m + 1 + q);
        }
        let cols = constrained
            .into_par_iter()
            .enumerate()
            .map(|(j, rows)| {
                let u = Array1::from_iter(rows.iter().map(|&r| f64::from(u8::from(r == j)) - lambda * p[[r, j]]));
                let mut pss = Array2::from_shape_fn((rows.len(), rows.len()), |(x, y)| p[[rows[x], rows[y]]]);
                small_inverse(&mut pss)?;
                Ok((rows, pss.dot(&u).to_vec()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Solved { p, lambda, cols })
    }

    /// The dense weights.
    fn ease(&self, m: usize, pairs: &[(u32, u32)], alpha: f64, pair_alpha: f64) -> Ease {
        let b = Array2::from_shape_fn((self.p.nrows(), m), |(r, c)| self.weight(r, c));
        Ease { alpha, lambda: self.lambda, pair_alpha, pairs: pairs.to_vec(), b }
    }

    /// The weight of input `r` for target item `j`.
    fn weight(&self, r: usize, j: usize) -> f32 {
        let (rows, v) = &self.cols[j];
        if rows.contains(&r) {
            0.0
        } else if rows.len() == 1 {
            (-self.p[[r, j]] / self.p[[j, j]]) as f32
        } else {
            let w = rows.iter().zip(v).fold(-self.lambda * self.p[[r, j]], |w, (&k, &vk)| w - self.p[[r, k]] * vk);
            w as f32
        }
    }
}

/// `(G + Λ)⁻¹` in f64: λ added to the first `m` (the inputs') diagonal entries, `pair_lambda`
/// to the rest. The Gram is freed once converted: at 5,000 items it is about 100 MB, the f64
/// inverse twice that.
fn regularized_inverse(gram: Array2<f32>, m: usize, lambda: f64, pair_lambda: f64) -> Result<Array2<f64>> {
    let mut p = gram.mapv(f64::from);
    drop(gram);
    for (k, d) in p.diag_mut().iter_mut().enumerate() {
        *d += if k < m { lambda } else { pair_lambda };
    }
    spd_inverse(&mut p)?;
    Ok(p)
}

/// Fits EASE on an extended Gram (`m` items, the always-on input, then `pairs`) with item λ = `alpha` × and pair
/// λ = `pair_alpha` × [`diagonal_scale`].
pub fn fit(gram: &Array2<f32>, m: usize, pairs: &[(u32, u32)], alpha: f64, pair_alpha: f64) -> Result<Ease> {
    let scale = diagonal_scale(gram, m);
    let solved = Solved::new(gram.clone(), m, pairs, alpha * scale, pair_alpha * scale)?;
    Ok(solved.ease(m, pairs, alpha, pair_alpha))
}

/// Mean of the first `m` (the items') entries of the Gram diagonal: the unit of the λ grids.
pub fn diagonal_scale(gram: &Array2<f32>, m: usize) -> f64 {
    let m = m.min(gram.nrows());
    (gram.diag().iter().take(m).map(|&v| f64::from(v)).sum::<f64>() / m.max(1) as f64).max(1.0)
}

/// The leading `rows` items, the always-on input and the chosen pairs `pair_rows` (indices
/// into the pairs) of an extended Gram with `m` items.
fn sub_gram(gram: &Array2<f32>, m: usize, rows: usize, pair_rows: &[usize]) -> Array2<f32> {
    let idx: Vec<usize> = (0..rows).chain([m]).chain(pair_rows.iter().map(|&q| m + 1 + q)).collect();
    gram.select(Axis(0), &idx).select(Axis(1), &idx)
}

/// Pairs are judged on at most this many most-bought items (each trial costs `items² × pairs`).
pub const PAIR_SEARCH_ITEMS: usize = 1000;

/// `queries` restricted to the leading `n` covered items.
fn restrict(queries: &[PosQuery], n: usize) -> Vec<PosQuery> {
    queries.iter().map(|(basket, target)| (basket.iter().copied().filter(|&a| a < n).collect(), target.filter(|&t| t < n))).collect()
}

/// Chooses the regularization on the leading `search_items` block of an extended Gram (`m`
/// items, the always-on input, then `pairs`, most co-bought first), so the cubic cost stays bounded. First the item
/// λ of [`LAMBDA_GRID`] with the best hit@10 + mrr@20 on `queries` for plain EASE (ties: the
/// larger λ). Then, with that λ and on the leading [`PAIR_SEARCH_ITEMS`], plain EASE against
/// pairs within that block, simplest first (each count of `pair_counts`, each λ of
/// [`PAIR_LAMBDA_GRID`] from the strongest): like the ranker's contenders, one replaces the
/// kept fit only when it beats it by more than a standard error of the per-query difference.
/// λs come back as multiples of the *whole* Gram's diagonal scale.
pub fn choose(
    gram: &Array2<f32>,
    m: usize,
    pairs: &[(u32, u32)],
    queries: &[PosQuery],
    search_items: usize,
    pair_counts: &[usize],
) -> Result<Choice> {
    let ms = m.min(search_items.max(1));
    let items = sub_gram(gram, m, ms, &[]);
    let sub_scale = diagonal_scale(&items, ms);
    let mut trials = Vec::new();
    let mut judged = |ease: Ease, queries: &[PosQuery]| {
        let j = judge(&ease, queries);
        let (items, alpha, lambda, pairs, pair_alpha) = (ease.b.ncols(), ease.alpha, ease.lambda, ease.pairs.len(), ease.pair_alpha);
        trials.push(LambdaTrial { items, alpha, lambda, pairs, pair_alpha, hit10: j.hit10, mrr20: j.mrr20 });
        (ease, j)
    };
    let item_queries = restrict(queries, ms);
    let mut best: Option<(Ease, Judgement)> = None;
    for &alpha in &LAMBDA_GRID {
        let (ease, j) = judged(fit(&items, ms, &[], alpha, 0.0)?, &item_queries);
        if best.as_ref().is_none_or(|(_, k)| j.score() >= k.score()) {
            best = Some((ease, j));
        }
    }
    let (plain, _) = best.ok_or_else(|| TrainError::Config { name: "ease_lambda", reason: "the λ grid is empty".into() })?;
    let (alpha, lambda) = (plain.alpha, plain.lambda);
    let mp = ms.min(PAIR_SEARCH_ITEMS);
    let in_block: Vec<usize> = (0..pairs.len()).filter(|&q| (pairs[q].1 as usize) < mp).collect();
    let mut counts: Vec<usize> = pair_counts.iter().map(|&c| c.min(in_block.len())).filter(|&c| c > 0).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut kept = (0, 0.0);
    if !counts.is_empty() {
        // the chosen items' inverse, bordered by each pair set (see `Solved::bordered`)
        let pair_queries = restrict(queries, mp);
        let ai = regularized_inverse(sub_gram(gram, m, mp, &[]), mp + 1, lambda, 0.0)?;
        let plain = Solved::with_inverse(ai.clone(), mp, &[], lambda)?.ease(mp, &[], alpha, 0.0);
        let (_, mut kept_judgement) = judged(plain, &pair_queries);
        for c in counts {
            let pair_gram = sub_gram(gram, m, mp, &in_block[..c]).slice(s![mp + 1.., ..]).to_owned();
            let k = ai.dot(&pair_gram.slice(s![.., ..mp + 1]).mapv(f64::from).t());
            let sub_pairs: Vec<(u32, u32)> = in_block[..c].iter().map(|&q| pairs[q]).collect();
            for &pair_alpha in &PAIR_LAMBDA_GRID {
                let solved = Solved::bordered(&ai, &k, &pair_gram, &sub_pairs, lambda, pair_alpha * sub_scale)?;
                let (_, j) = judged(solved.ease(mp, &sub_pairs, alpha, pair_alpha), &pair_queries);
                if clearly_better(&j.outcome, &kept_judgement.outcome) {
                    (kept, kept_judgement) = ((c, pair_alpha), j);
                }
            }
        }
    }
    // absolute λs carry over to the whole Gram
    let whole = diagonal_scale(gram, m);
    Ok(Choice { alpha: lambda / whole, pairs: kept.0, pair_alpha: kept.1 * sub_scale / whole, trials })
}

/// EASE alone on validation queries.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// hit@10.
    pub hit10: f64,
    /// mrr@20.
    pub mrr20: f64,
    /// Per query: hit@10 + reciprocal rank within the top 20.
    pub outcome: Vec<f64>,
}

impl Judgement {
    /// hit@10 + mrr@20.
    fn score(&self) -> f64 {
        self.hit10 + self.mrr20
    }
}

/// How EASE alone ranks the targets of `queries`.
pub fn judge(ease: &Ease, queries: &[PosQuery]) -> Judgement {
    let m = ease.b.ncols();
    let partners = pair_partners(&ease.pairs, m);
    let positions: Vec<Option<usize>> = queries
        .par_iter()
        .map(|(basket, target)| {
            let mut score = ease.b.row(m).to_owned();
            for &a in basket {
                score += &ease.b.row(a);
                for &(b, q) in &partners[a] {
                    if basket.contains(&(b as usize)) {
                        score += &ease.b.row(m + 1 + q as usize);
                    }
                }
            }
            let top = top_k(m, 20, |c| score[c], |c| !basket.contains(&c));
            target.and_then(|t| top.iter().position(|&c| c == t))
        })
        .collect();
    let n = queries.len().max(1) as f64;
    let hit10 = positions.iter().filter(|p| p.is_some_and(|r| r < 10)).count() as f64 / n;
    let mrr20 = positions.iter().map(|p| p.map_or(0.0, |r| 1.0 / (r + 1) as f64)).sum::<f64>() / n;
    Judgement { hit10, mrr20, outcome: positions.into_iter().map(outcome).collect() }
}

/// Sparse EASE weights in a model's item space, as [`fit_sparse`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseEase {
    /// `items[i, j]`, the strongest `keep` of each covered row.
    pub items: Csr,
    /// The pairs in item space, with the strongest `keep` weights of each.
    pub pairs: PairWeights,
    /// The always-on input's weight of every item (its base rate; 0 where not covered).
    pub always_on: Vec<f32>,
    /// The item λ.
    pub lambda: f64,
}

/// Fits EASE like [`fit`] and keeps the strongest `keep` weights (by magnitude) of each row,
/// computed straight from the inverse (the dense weight matrix is never built), in the item
/// space of a model with `n_items` items (`items[a]` is the item of covered position `a`).
pub fn fit_sparse(
    gram: Array2<f32>,
    pairs: &[(u32, u32)],
    alpha: f64,
    pair_alpha: f64,
    items: &[ItemIx],
    n_items: usize,
    keep: usize,
) -> Result<SparseEase> {
    let m = items.len();
    let scale = diagonal_scale(&gram, m);
    let solved = Solved::new(gram, m, pairs, alpha * scale, pair_alpha * scale)?;
    let inputs: Vec<usize> = (0..m).chain(m + 1..m + 1 + pairs.len()).collect();
    let mut rows = strongest(&inputs, m, |r, c| solved.weight(r, c), items, keep);
    let pair_rows = rows.split_off(m);
    let mut always_on = vec![0f32; n_items];
    for (c, &i) in items.iter().enumerate() {
        always_on[i as usize] = solved.weight(m, c);
    }
    let mut item_rows = vec![Vec::new(); n_items];
    for (a, r) in rows.into_iter().enumerate() {
        item_rows[items[a] as usize] = r;
    }
    let pairs = PairWeights {
        pairs: pairs.iter().map(|&(a, b)| (items[a as usize].min(items[b as usize]), items[a as usize].max(items[b as usize]))).collect(),
        weights: Csr::from_rows(pair_rows),
    };
    Ok(SparseEase { items: Csr::from_rows(item_rows), pairs, always_on, lambda: solved.lambda })
}

/// The strongest `keep` weights (by magnitude) of each of the input rows `rows` over `m`
/// covered columns, as `(item, weight)`; `items[c]` is the item of covered position `c`.
fn strongest(rows: &[usize], m: usize, weight: impl Fn(usize, usize) -> f32 + Sync, items: &[ItemIx], keep: usize) -> Vec<Vec<(u32, f32)>> {
    rows.par_iter()
        .map(|&a| {
            let mut r: Vec<(u32, f32)> = (0..m).map(|c| (items[c], weight(a, c))).filter(|(_, v)| *v != 0.0).collect();
            keep_strongest(&mut r, keep);
            r
        })
        .collect()
}

/// Keeps the `keep` weights of largest magnitude (ties: the lower item), in no particular order.
fn keep_strongest(r: &mut Vec<(u32, f32)>, keep: usize) {
    if r.len() > keep {
        r.select_nth_unstable_by(keep, |x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
        r.truncate(keep);
    }
}

const BLOCK: usize = 192;

/// Inverts a symmetric positive definite matrix in place: `A = L·Lᵀ` (blocked Cholesky), then
/// `W = L⁻¹`, then `A⁻¹ = Wᵀ·W`, each about `n³/3` multiply-adds, nearly all of them in matrix
/// products (ndarray's `general_mat_mul`) over the rayon pool: half the work of a Gauss-Jordan
/// sweep. Errors when a pivot is not positive (the matrix is not positive definite).
pub fn spd_inverse(a: &mut Array2<f64>) -> Result<()> {
    let n = a.nrows();
    if a.ncols() != n {
        return Err(TrainError::Tensor(format!("cannot invert a {}×{} matrix", n, a.ncols())));
    }
    let blocks: Vec<(usize, usize)> = (0..n).step_by(BLOCK).map(|k0| (k0, (k0 + BLOCK).min(n))).collect();
    // 1. L in the lower triangle (the diagonal blocks' upper halves zeroed), right-looking
    for &(k0, k1) in &blocks {
        let mut d = a.slice(s![k0..k1, k0..k1]).to_owned();
        small_cholesky(&mut d)?;
        if k1 < n {
            let inv = lower_inverse(&d);
            // the panel below: A21 · L11⁻ᵀ
            let mut panel = Array2::<f64>::zeros((n - k1, k1 - k0));
            par_rows(panel.view_mut(), a.slice(s![k1.., k0..k1]), |c, x| general_mat_mul(1.0, &x, &inv.t(), 0.0, c));
            a.slice_mut(s![k1.., k0..k1]).assign(&panel);
            // the trailing lower triangle, by row chunks: A22[r, ..r_end] −= panel[r] · panel[..r_end]ᵀ
            let mut chunks: Vec<(usize, ArrayViewMut2<'_, f64>)> = Vec::new();
            let mut rest = a.slice_mut(s![k1.., k1..]);
            let mut r0 = 0;
            while rest.nrows() > 0 {
                let take = BLOCK.min(rest.nrows());
                let (head, tail) = rest.split_at(Axis(0), take);
                chunks.push((r0, head));
                rest = tail;
                r0 += take;
            }
            chunks.into_par_iter().for_each(|(r0, mut c)| {
                let r1 = r0 + c.nrows();
                general_mat_mul(-1.0, &panel.slice(s![r0..r1, ..]), &panel.slice(s![..r1, ..]).t(), 1.0, &mut c.slice_mut(s![.., ..r1]));
            });
        }
        a.slice_mut(s![k0..k1, k0..k1]).assign(&d);
    }
    // 2. W = L⁻¹ in place, block row by block row: W[I, J] = −W[I, I] · L[I, J..I] · W[J..I, J]
    for (bi, &(i0, i1)) in blocks.iter().enumerate() {
        let wii = lower_inverse(&a.slice(s![i0..i1, i0..i1]).to_owned());
        let li = a.slice(s![i0..i1, ..i0]).to_owned();
        let view = a.view();
        let row: Vec<Array2<f64>> =
            blocks[..bi].par_iter().map(|&(j0, j1)| -wii.dot(&li.slice(s![.., j0..]).dot(&view.slice(s![j0..i0, j0..j1])))).collect();
        for (&(j0, j1), w) in blocks.iter().zip(&row) {
            a.slice_mut(s![i0..i1, j0..j1]).assign(w);
        }
        a.slice_mut(s![i0..i1, i0..i1]).assign(&wii);
    }
    // 3. A⁻¹ = Wᵀ · W: block (I, J ≤ I) = W[I.., I]ᵀ · W[I.., J], written transposed above the
    // diagonal blocks (free: W is lower) and on the diagonal block once W[I, I] is read
    for (bi, &(i0, i1)) in blocks.iter().enumerate() {
        let view = a.view();
        let col = view.slice(s![i0.., i0..i1]);
        let row: Vec<Array2<f64>> = blocks[..=bi].par_iter().map(|&(j0, j1)| col.t().dot(&view.slice(s![i0.., j0..j1]))).collect();
        for (&(j0, j1), r) in blocks.iter().zip(&row) {
            if j0 < i0 {
                a.slice_mut(s![j0..j1, i0..i1]).assign(&r.t());
            } else {
                a.slice_mut(s![i0..i1, i0..i1]).assign(r);
            }
        }
    }
    // the lower half, mirrored
    for (bi, &(i0, i1)) in blocks.iter().enumerate() {
        for &(j0, j1) in &blocks[..bi] {
            let upper = a.slice(s![j0..j1, i0..i1]).t().to_owned();
            a.slice_mut(s![i0..i1, j0..j1]).assign(&upper);
        }
    }
    Ok(())
}

/// `f(c, x)` on row chunks of `c` and the same rows of `x`, over the rayon pool.
fn par_rows(c: ArrayViewMut2<'_, f64>, x: ArrayView2<'_, f64>, f: impl Fn(&mut ArrayViewMut2<'_, f64>, ArrayView2<'_, f64>) + Sync) {
    fn go<F: Fn(&mut ArrayViewMut2<'_, f64>, ArrayView2<'_, f64>) + Sync>(mut c: ArrayViewMut2<'_, f64>, x: ArrayView2<'_, f64>, f: &F) {
        if c.nrows() > 512 {
            let mid = c.nrows() / 2;
            let (c1, c2) = c.split_at(Axis(0), mid);
            let (x1, x2) = x.split_at(Axis(0), mid);
            rayon::join(|| go(c1, x1, f), || go(c2, x2, f));
        } else if c.nrows() > 0 {
            f(&mut c, x);
        }
    }
    go(c, x, &f);
}

/// Unblocked Cholesky of a small SPD block: `L` in the lower triangle, the upper zeroed.
fn small_cholesky(a: &mut Array2<f64>) -> Result<()> {
    let n = a.nrows();
    for j in 0..n {
        let d = a[[j, j]] - (0..j).map(|k| a[[j, k]] * a[[j, k]]).sum::<f64>();
        if !(d.is_finite() && d > 1e-12) {
            return Err(TrainError::Tensor("the regularized Gram matrix is not positive definite".into()));
        }
        let d = d.sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let v = a[[i, j]] - (0..j).map(|k| a[[i, k]] * a[[j, k]]).sum::<f64>();
            a[[i, j]] = v / d;
            a[[j, i]] = 0.0;
        }
    }
    Ok(())
}

/// The inverse of a small lower-triangular block with a positive diagonal.
fn lower_inverse(l: &Array2<f64>) -> Array2<f64> {
    let mut x = l.clone();
    for i in 0..x.nrows() {
        let lii = x[[i, i]];
        for j in 0..i {
            // x[i, j] = −(Σ_{k=j}^{i−1} l[i, k] · x[k, j]) / l[i, i]; row i still holds L at k ≥ j
            let s: f64 = (j..i).map(|k| x[[i, k]] * x[[k, j]]).sum();
            x[[i, j]] = -s / lii;
        }
        x[[i, i]] = 1.0 / lii;
    }
    x
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

/// An item and its EASE row: `(target, weight)`.
pub type ItemRow = (ItemIx, Vec<(u32, f32)>);

/// Items of a tail block whose rows the block fits (the rest of the block are dense-fit items
/// its members are bought with).
const TAIL_MEMBERS: usize = 750;
/// Items in a tail block in all: members, then their most co-bought dense-fit items.
pub const TAIL_BLOCK: usize = 1000;

/// EASE rows for items the dense fit leaves out (beyond the `ease_items` most bought): the
/// `max_items` most-bought of them with at least two orders are grouped into blocks of
/// co-purchase-connected items (a breadth-first walk over each item's co-purchase row, the
/// strongest first, at most [`TAIL_MEMBERS`] a block), each block completed by the dense-fit
/// items its members are bought with most (up to [`TAIL_BLOCK`] in all) and an always-on
/// input, and fitted as its own EASE on the co-purchase counts (`pairs`, the diagonal
/// `orders`) with λ = `alpha` × the block's mean diagonal. A member's row holds its
/// strongest `keep` weights over the block. Memory: one block's dense inverse per thread;
/// time: blocks × [`TAIL_BLOCK`]³.
///
/// Returns each member's row.
pub fn fit_tail(pairs: &Csr, orders: &[f32], n_orders: f64, dense: &[ItemIx], alpha: f64, max_items: usize, keep: usize) -> Vec<ItemRow> {
    let n = orders.len();
    let mut in_dense = vec![false; n];
    dense.iter().for_each(|&i| in_dense[i as usize] = true);
    let mut tail: Vec<ItemIx> = (0..n as ItemIx).filter(|&i| !in_dense[i as usize] && orders[i as usize] >= 2.0).collect();
    tail.sort_unstable_by(|&a, &b| orders[b as usize].total_cmp(&orders[a as usize]).then(a.cmp(&b)));
    tail.truncate(max_items);
    let mut wanted = vec![false; n];
    tail.iter().for_each(|&i| wanted[i as usize] = true);
    let strongest_first = |i: ItemIx| {
        let (cols, vals) = pairs.row(i as usize);
        let mut r: Vec<(u32, f32)> = cols.iter().copied().zip(vals.iter().copied()).collect();
        r.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        r
    };
    // blocks: members by a breadth-first walk, then their dense-fit partners
    let mut assigned = vec![false; n];
    let mut blocks: Vec<Vec<ItemIx>> = Vec::new();
    for &seed in &tail {
        if assigned[seed as usize] {
            continue;
        }
        let mut members = Vec::new();
        let mut queue = std::collections::VecDeque::from([seed]);
        while let Some(x) = queue.pop_front() {
            if members.len() >= TAIL_MEMBERS {
                break;
            }
            if assigned[x as usize] {
                continue;
            }
            assigned[x as usize] = true;
            members.push(x);
            queue.extend(strongest_first(x).into_iter().map(|(j, _)| j).filter(|&j| wanted[j as usize] && !assigned[j as usize]));
        }
        let mut partners: std::collections::HashMap<ItemIx, f32> = std::collections::HashMap::new();
        for &x in &members {
            let (cols, vals) = pairs.row(x as usize);
            for (&j, &c) in cols.iter().zip(vals) {
                if in_dense[j as usize] {
                    *partners.entry(j).or_default() += c;
                }
            }
        }
        let mut partners: Vec<(ItemIx, f32)> = partners.into_iter().collect();
        partners.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let n_members = members.len();
        members.extend(partners.into_iter().take(TAIL_BLOCK - n_members).map(|(j, _)| j));
        blocks.push(members);
    }
    let rows: Vec<Vec<ItemRow>> = blocks
        .par_iter()
        .map(|block| {
            let m = block.len();
            let pos: std::collections::HashMap<ItemIx, usize> = block.iter().enumerate().map(|(a, &i)| (i, a)).collect();
            // the block's Gram: co-purchase counts (either row may hold a pair), orders on the
            // diagonal, the always-on input last
            let mut g = Array2::<f64>::zeros((m + 1, m + 1));
            for (a, &i) in block.iter().enumerate() {
                g[[a, a]] = f64::from(orders[i as usize]);
                g[[a, m]] = f64::from(orders[i as usize]);
                g[[m, a]] = f64::from(orders[i as usize]);
                let (cols, vals) = pairs.row(i as usize);
                for (&j, &c) in cols.iter().zip(vals) {
                    if let Some(&b) = pos.get(&j).filter(|&&b| b != a) {
                        let c = f64::from(c);
                        g[[a, b]] = g[[a, b]].max(c);
                        g[[b, a]] = g[[b, a]].max(c);
                    }
                }
            }
            g[[m, m]] = n_orders.max(1.0);
            let lambda = (alpha * (0..m).map(|a| g[[a, a]]).sum::<f64>() / m.max(1) as f64).max(1e-6);
            // the counts are the strongest pairs of each row, not the whole Gram, so a block's
            // matrix may fall short of positive definite: then more λ, and past that no rows
            let Some(p) = [1.0, 10.0, 100.0].iter().find_map(|f| {
                let mut p = g.clone();
                p.diag_mut().iter_mut().for_each(|d| *d += lambda * f);
                spd_inverse(&mut p).ok().map(|()| p)
            }) else {
                return Vec::new();
            };
            block
                .iter()
                .enumerate()
                .filter(|&(_, &i)| !in_dense[i as usize])
                .map(|(a, &i)| {
                    let mut r: Vec<(u32, f32)> = (0..m)
                        .filter(|&c| c != a)
                        .map(|c| (block[c], (-p[[a, c]] / p[[c, c]]) as f32))
                        .filter(|(_, v)| *v != 0.0)
                        .collect();
                    keep_strongest(&mut r, keep);
                    r.sort_unstable_by_key(|&(j, _)| j);
                    (i, r)
                })
                .collect()
        })
        .collect();
    rows.into_iter().flatten().collect()
}

/// hit@10 and mrr@20 outcomes ([`outcome`]) of EASE alone in a model's item space: a query's
/// scores are the basket items' `rows` summed plus `always_on`, the basket left out.
pub fn sparse_outcomes(rows: &Csr, always_on: &[f32], queries: &[(&[ItemIx], ItemIx)]) -> Vec<f64> {
    queries
        .par_iter()
        .map(|&(basket, target)| {
            let mut acc: std::collections::HashMap<ItemIx, f32> = std::collections::HashMap::new();
            for &i in basket {
                let (cols, vals) = rows.row(i as usize);
                for (&j, &w) in cols.iter().zip(vals) {
                    *acc.entry(j).or_default() += w;
                }
            }
            let base = |j: ItemIx| always_on.get(j as usize).copied().unwrap_or(0.0);
            let score = |j: ItemIx| acc.get(&j).copied().unwrap_or(0.0) + base(j);
            let t = score(target);
            // rank of the target: items scoring higher (ties: the lower index first), among the
            // touched items and, for the rest, their base rates
            let better = |j: ItemIx, v: f32| (v > t || (v == t && j < target)) && j != target && !basket.contains(&j);
            let touched = acc.iter().filter(|&(&j, &v)| better(j, v + base(j))).count();
            let untouched = (0..rows.n_rows() as ItemIx).filter(|j| !acc.contains_key(j) && better(*j, base(*j))).count();
            outcome(Some(touched + untouched))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Co-purchase counts, order counts and the order count of baskets of three items around
    /// a ring (a real Gram: positive semi-definite).
    fn ring(n: usize) -> (Csr, Vec<f32>, f64) {
        let mut counts = std::collections::BTreeMap::<(usize, usize), f32>::new();
        let mut orders = vec![0f32; n];
        let mut baskets = 0;
        for i in 0..n {
            for rep in 0..1 + i % 3 {
                let basket = [i, (i + 1) % n, (i + 2 + (i * 7 + rep) % 5) % n];
                baskets += 1;
                for (x, &a) in basket.iter().enumerate() {
                    orders[a] += 1.0;
                    for &b in &basket[x + 1..] {
                        *counts.entry((a, b)).or_default() += 1.0;
                        *counts.entry((b, a)).or_default() += 1.0;
                    }
                }
            }
        }
        let mut rows = vec![Vec::new(); n];
        for (&(a, b), &c) in &counts {
            rows[a].push((b as u32, c));
        }
        (Csr::from_rows(rows), orders, f64::from(baskets))
    }

    #[test]
    fn a_tail_block_holding_the_whole_catalog_is_exact_ease() {
        let (pairs, orders, n_orders) = ring(60);
        let rows = fit_tail(&pairs, &orders, n_orders, &[], 0.5, 1000, 1000);
        assert_eq!(rows.len(), 60, "every item is a member of the one block");
        // the same Gram, dense, through the dense fit
        let mut g = Array2::<f32>::zeros((61, 61));
        for i in 0..60 {
            g[[i, i]] = orders[i];
            g[[i, 60]] = orders[i];
            g[[60, i]] = orders[i];
            let (cols, vals) = pairs.row(i);
            for (&j, &c) in cols.iter().zip(vals) {
                g[[i, j as usize]] = c;
            }
        }
        g[[60, 60]] = n_orders as f32;
        let items: Vec<ItemIx> = (0..60).collect();
        let exact = fit_sparse(g.clone(), &[], 0.5, 0.0, &items, 60, 1000).unwrap();
        for (i, row) in rows {
            let (cols, vals) = exact.items.row(i as usize);
            let mut want: Vec<(u32, f32)> = cols.iter().copied().zip(vals.iter().copied()).collect();
            want.sort_unstable_by_key(|&(j, _)| j);
            assert_eq!(row.len(), want.len(), "row {i}");
            for (&(j, w), &(k, v)) in row.iter().zip(&want) {
                assert_eq!(j, k);
                assert!((w - v).abs() <= 1e-4 * v.abs().max(1e-3), "B[{i}, {j}]: {w} vs {v}");
            }
        }
    }

    #[test]
    fn sparse_outcomes_rank_the_target_among_every_item() {
        // rows: item 0 predicts 1 (0.5) and 2 (0.2); item 3 predicts 2 (0.4); base rates on 4 and 5
        let rows = Csr::from_rows(vec![vec![(1, 0.5), (2, 0.2)], vec![], vec![], vec![(2, 0.4)], vec![], vec![]]);
        let always_on = [0.0, 0.0, 0.0, 0.0, 0.3, 0.1];
        let basket = [0, 3];
        // scores: 1 → 0.5, 2 → 0.6, 4 → 0.3, 5 → 0.1; the basket is left out
        let o = sparse_outcomes(&rows, &always_on, &[(&basket[..], 2), (&basket[..], 1), (&basket[..], 4), (&basket[..], 5)]);
        assert_eq!(o, vec![outcome(Some(0)), outcome(Some(1)), outcome(Some(2)), outcome(Some(3))]);
    }

    #[test]
    fn tail_blocks_cover_only_items_beyond_the_dense_fit_and_stay_bounded() {
        let (pairs, orders, n_orders) = ring(2600);
        let dense: Vec<ItemIx> = (0..100).collect();
        let rows = fit_tail(&pairs, &orders, n_orders, &dense, 0.5, 2000, 50);
        assert_eq!(rows.len(), 2000, "the 2,000 most-bought items beyond the dense fit");
        assert!(rows.iter().all(|(i, r)| *i >= 100 && r.len() <= 50 && !r.iter().any(|&(j, _)| j == *i)));
        // a ring neighbour (bought with it) gets a positive weight
        let (i, r) = &rows[0];
        let (cols, _) = pairs.row(*i as usize);
        assert!(r.iter().any(|&(j, w)| cols.contains(&j) && w > 0.0), "item {i}: {r:?}");
    }

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
        // three items over 20 orders: 0 and 1 mostly together, 2 alone; then the always-on input
        let gram = ndarray::arr2(&[[10.0f32, 8.0, 1.0, 10.0], [8.0, 9.0, 1.0, 9.0], [1.0, 1.0, 5.0, 5.0], [10.0, 9.0, 5.0, 20.0]]);
        let ease = fit(&gram, 3, &[], 0.5, 0.0).unwrap();
        let lambda = 0.5 * 8.0; // 0.5 × the items' mean diagonal
        assert!((ease.lambda - lambda).abs() < 1e-12);
        let mut p = gram.mapv(f64::from) + Array2::<f64>::eye(4) * lambda;
        spd_inverse(&mut p).unwrap();
        for c in 0..3 {
            assert_eq!(ease.b[[c, c]], 0.0);
            for a in (0..4).filter(|&a| a != c) {
                assert!((f64::from(ease.b[[a, c]]) + p[[a, c]] / p[[c, c]]).abs() < 1e-6);
            }
        }
        assert!(ease.b[[0, 1]] > ease.b[[0, 2]], "the pair bought together weighs more");
        assert!(ease.b[[3, 2]] > 0.0, "item 2's base rate: it sells without the others");
        let sparse = fit_sparse(gram.clone(), &[], 0.5, 0.0, &[4, 0, 2], 5, 1).unwrap();
        assert_eq!(sparse.items.row(4), (&[0u32][..], &[ease.b[[0, 1]]][..]), "row of item 4 keeps its strongest weight, to item 0");
        assert!(sparse.items.row(1).0.is_empty() && sparse.items.n_rows() == 5 && sparse.pairs.pairs.is_empty());
        assert_eq!(
            sparse.always_on,
            [ease.b[[3, 1]], 0.0, ease.b[[3, 2]], 0.0, ease.b[[3, 0]]],
            "every covered item's base rate, in item space"
        );
        assert_eq!(sparse.lambda, ease.lambda);
    }

    /// Orders over 6 items where item 4 comes with the *pair* (0, 1) and item 5 with exactly one
    /// of 0 and 1: rows of X, and [1 | Z], the always-on column and the pair columns of `pairs`.
    fn pair_log(pairs: &[(u32, u32)]) -> (Array2<f64>, Array2<f64>) {
        let mut state = 12345u64;
        let mut bit = |p: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % 100 < p
        };
        let x = Array2::from_shape_fn((400, 6), |_| 0.0);
        let mut x = x;
        for mut o in x.axis_iter_mut(Axis(0)) {
            for i in 0..4 {
                o[i] = f64::from(u8::from(bit(45)));
            }
            o[4] = f64::from(u8::from(if o[0] * o[1] > 0.0 { bit(90) } else { bit(10) }));
            o[5] = f64::from(u8::from(if o[0] + o[1] == 1.0 { bit(90) } else { bit(10) }));
        }
        let z = Array2::from_shape_fn((x.nrows(), 1 + pairs.len()), |(o, q)| match q {
            0 => 1.0,
            q => x[[o, pairs[q - 1].0 as usize]] * x[[o, pairs[q - 1].1 as usize]],
        });
        (x, z)
    }

    #[test]
    fn higher_order_ease_solves_each_targets_constrained_ridge() {
        let pairs = [(0u32, 1u32), (2, 3), (0, 4)];
        let (x, z) = pair_log(&pairs);
        let y = ndarray::concatenate![Axis(1), x, z];
        let g = y.t().dot(&y);
        let (m, n) = (6, 10);
        let ease = fit(&g.mapv(|v| v as f32), m, &pairs, 0.5, 0.1).unwrap();
        let scale = (0..m).map(|i| g[[i, i]]).sum::<f64>() / m as f64;
        assert!((ease.lambda - 0.5 * scale).abs() < 1e-9);
        let pair_holds = |r: usize, j: usize| r > m && [pairs[r - m - 1].0, pairs[r - m - 1].1].contains(&(j as u32));
        for j in 0..m {
            // the regression for target j, straight: inputs (the always-on one included) other
            // than j and pairs holding it
            let keep: Vec<usize> = (0..n).filter(|&r| r != j && !pair_holds(r, j)).collect();
            let yk = y.select(Axis(1), &keep);
            let mut a = yk.t().dot(&yk);
            for (k, &r) in keep.iter().enumerate() {
                a[[k, k]] += if r <= m { 0.5 * scale } else { 0.1 * scale };
            }
            spd_inverse(&mut a).unwrap();
            let w = a.dot(&yk.t().dot(&x.column(j)));
            for r in 0..n {
                let direct = keep.iter().position(|&k| k == r).map_or(0.0, |k| w[k]);
                assert!((f64::from(ease.b[[r, j]]) - direct).abs() < 1e-4, "b[{r}, {j}] = {} vs {direct}", ease.b[[r, j]]);
            }
        }
        assert!(ease.b[[m + 1, 4]] > 0.3, "the pair (0, 1) predicts item 4: {}", ease.b[[m + 1, 4]]);
        // the bordered inverse (inputs' inverse + Schur complement) is the same inverse
        let g32 = g.mapv(|v| v as f32);
        let direct = Solved::new(g32.clone(), m, &pairs, ease.lambda, 7.0).unwrap();
        let mut ai = g.slice(s![..=m, ..=m]).to_owned();
        ai.diag_mut().mapv_inplace(|v| v + ease.lambda);
        spd_inverse(&mut ai).unwrap();
        let k = ai.dot(&g.slice(s![m + 1.., ..=m]).t());
        let bordered = Solved::bordered(&ai, &k, &g32.slice(s![m + 1.., ..]).to_owned(), &pairs, ease.lambda, 7.0).unwrap();
        let err = (&direct.p - &bordered.p).iter().fold(0f64, |e, v| e.max(v.abs()));
        assert!(err < 1e-9, "max |P − P_bordered| = {err}");
        // the served form: pair rows in item space, scored only when both items are present
        let sparse = fit_sparse(g.mapv(|v| v as f32), &pairs, 0.5, 0.1, &[5, 4, 3, 2, 1, 0], 6, 6).unwrap();
        assert_eq!(sparse.pairs.pairs, [(4, 5), (2, 3), (1, 5)]);
        assert!((sparse.pairs.weights.get(0, 1) - ease.b[[m + 1, 4]]).abs() < 1e-6);
        let plain = fit(&g.mapv(|v| v as f32).slice(s![..=m, ..=m]).to_owned(), m, &[], 0.5, 0.0).unwrap();
        let q: Vec<PosQuery> = vec![(vec![0, 1], Some(4)), (vec![0], Some(5))];
        let (pj, hj) = (judge(&plain, &q), judge(&ease, &q));
        assert_eq!(hj.outcome, [2.0, 2.0], "with pairs: 4 first for the pair, 5 first for one of it");
        assert!(pj.outcome[0] < 2.0, "plain EASE cannot tell the pair from its items: {pj:?}");
    }

    #[test]
    fn pairs_are_kept_only_when_clearly_better_on_the_queries() {
        let pairs = [(0u32, 1u32), (2, 3)];
        let (x, z) = pair_log(&pairs);
        let y = ndarray::concatenate![Axis(1), x, z];
        let g = y.t().dot(&y).mapv(|v| v as f32);
        let choose_on = |queries: &[PosQuery], search| choose(&g, 6, &pairs, queries, search, &[1, 2]).unwrap();
        // baskets holding the pair (0, 1) want 4, baskets with one of them want 5
        let pair_queries: Vec<PosQuery> =
            (0..40).map(|k| if k % 2 == 0 { (vec![0, 1, 2], Some(4)) } else { (vec![k % 4 / 2, 3], Some(5)) }).collect();
        let choice = choose_on(&pair_queries, 6);
        assert_eq!(choice.trials.len(), LAMBDA_GRID.len() + 1 + 2 * PAIR_LAMBDA_GRID.len(), "{:?}", choice.trials);
        assert!(choice.alpha > 0.0 && choice.alpha.is_finite() && choice.pair_alpha > 0.0);
        assert!(choice.pairs > 0, "{choice:?}");
        // queries the pairs cannot help: plain EASE stays
        let plain_queries: Vec<PosQuery> = (0..40).map(|k| (vec![k % 2], Some(5))).collect();
        assert_eq!(choose_on(&plain_queries, 6).pairs, 0);
        // a search block of 1 item holds no pair: plain EASE only
        let small = choose_on(&pair_queries, 1);
        assert_eq!((small.pairs, small.trials.len()), (0, LAMBDA_GRID.len()));
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

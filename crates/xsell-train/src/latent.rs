//! Latent categories: the item kinds of a catalog without categories, from k-means (linfa)
//! over the centred, unit input embeddings, so that items used in the same contexts share a kind.
//!
//! **Boundary:** linfa works on ndarray 0.16 while the workspace uses 0.17; embeddings cross
//! here as flat slices, and nothing else in the workspace sees linfa's types.

use linfa::DatasetBase;
use linfa::traits::{Fit, Predict};
use linfa_clustering::KMeans;
use ndarray::Array2;
use ndarray16 as nd16;

use crate::{Result, TrainError};

/// Items per latent category aimed at by the automatic count.
pub const ITEMS_PER_KIND: usize = 30;
/// Most latent categories of the automatic count.
pub const MAX_AUTO_KINDS: usize = 256;
/// k-means is fitted on at most this many most-bought items; the others are assigned to the
/// nearest centroid.
pub const FIT_ITEMS: usize = 20_000;

/// The automatic number of latent categories for `n` items: about one per
/// [`ITEMS_PER_KIND`], within `2..=MAX_AUTO_KINDS` (1 for a catalog too small to split).
pub fn auto_kinds(n: usize) -> usize {
    if n < 2 * ITEMS_PER_KIND { 1 } else { (n / ITEMS_PER_KIND).clamp(2, MAX_AUTO_KINDS) }
}

/// Per item (row of `emb_in`), its latent category, `0..k`; `k` = `requested`, or
/// [`auto_kinds`] when 0. Deterministic for given embeddings (linfa's seeded generator).
pub fn latent_categories(emb_in: &Array2<f32>, orders: &[f32], requested: usize) -> Result<Vec<u32>> {
    let (n, d) = emb_in.dim();
    let k = if requested == 0 { auto_kinds(n) } else { requested.min(n) };
    if k <= 1 || d == 0 {
        return Ok(vec![0; n]);
    }
    // centred first: skip-gram vectors share a common (popularity) direction that would
    // otherwise make every cosine near 1
    let mean = emb_in.mean_axis(ndarray::Axis(0)).unwrap_or_else(|| ndarray::Array1::zeros(d));
    let unit: Vec<f32> = emb_in
        .rows()
        .into_iter()
        .flat_map(|r| {
            let c = &r - &mean;
            let norm = c.dot(&c).sqrt().max(1e-12);
            c.into_iter().map(move |v| v / norm).collect::<Vec<_>>()
        })
        .collect();
    let all = nd16::Array2::from_shape_vec((n, d), unit).map_err(|e| TrainError::Numeric(format!("latent categories: {e}")))?;
    let mut by_orders: Vec<usize> = (0..n).collect();
    by_orders.sort_unstable_by(|&a, &b| orders[b].total_cmp(&orders[a]).then(a.cmp(&b)));
    by_orders.truncate(FIT_ITEMS);
    let fit_rows = all.select(nd16::Axis(0), &by_orders);
    let model = KMeans::params(k)
        .n_runs(3)
        .max_n_iterations(100)
        .tolerance(1e-4)
        .fit(&DatasetBase::from(fit_rows))
        .map_err(|e| TrainError::Numeric(format!("latent categories (k-means, k = {k}): {e}")))?;
    let assigned: nd16::Array1<usize> = model.predict(&all);
    Ok(assigned.iter().map(|&c| c as u32).collect())
}

/// Latent categories that keep the earlier ones: an item with an earlier category (`kept`)
/// keeps it, a new item joins the category whose members' centred, unit input embeddings it is
/// closest to on average (an update's way: no new k-means).
pub fn kept_categories(emb_in: &Array2<f32>, kept: &[Option<u32>]) -> Vec<u32> {
    let (n, d) = emb_in.dim();
    let mean = emb_in.mean_axis(ndarray::Axis(0)).unwrap_or_else(|| ndarray::Array1::zeros(d));
    let unit = |i: usize| {
        let c = &emb_in.row(i) - &mean;
        let norm = c.dot(&c).sqrt().max(1e-12);
        c / norm
    };
    let k = kept.iter().flatten().map(|&c| c as usize + 1).max().unwrap_or(0);
    let mut centroids = Array2::<f32>::zeros((k, d));
    let mut members = vec![0f32; k];
    for (i, c) in kept.iter().enumerate().take(n) {
        if let Some(c) = *c {
            let mut row = centroids.row_mut(c as usize);
            row += &unit(i);
            members[c as usize] += 1.0;
        }
    }
    for (mut row, &m) in centroids.rows_mut().into_iter().zip(&members) {
        row /= m.max(1.0);
    }
    (0..n)
        .map(|i| match kept.get(i).copied().flatten() {
            Some(c) => c,
            None if k == 0 => 0,
            None => {
                let u = unit(i);
                (0..k).max_by(|&a, &b| centroids.row(a).dot(&u).total_cmp(&centroids.row(b).dot(&u))).unwrap_or(0) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clear_groups_are_found_whatever_their_scale() {
        // items 0..40 point one way, 40..80 the other; lengths vary (only direction counts)
        let emb = Array2::from_shape_fn((80, 4), |(i, d)| {
            let scale = 1.0 + (i % 7) as f32;
            let base = if i < 40 { [1.0, 0.1, 0.0, 0.0] } else { [0.0, 0.0, 1.0, 0.1] };
            scale * (base[d] + 0.01 * ((i * 31 + d * 17) % 11) as f32)
        });
        let groups = latent_categories(&emb, &vec![1.0; 80], 2).unwrap();
        assert!(groups[..40].iter().all(|&g| g == groups[0]));
        assert!(groups[40..].iter().all(|&g| g == groups[40]));
        assert_ne!(groups[0], groups[40]);
        assert_eq!(auto_kinds(10), 1);
        assert_eq!(auto_kinds(3000), 100);
        assert_eq!(auto_kinds(1_000_000), MAX_AUTO_KINDS);
    }

    #[test]
    fn known_items_keep_their_category_and_new_ones_join_the_nearest() {
        // two directions; the known items carry categories 1 and 0 (not what k-means would
        // number), items 78 and 79 are new, one of each direction
        let emb = Array2::from_shape_fn((80, 4), |(i, d)| {
            let base = if i % 2 == 0 { [1.0, 0.1, 0.0, 0.0] } else { [0.0, 0.0, 1.0, 0.1] };
            base[d] + 0.01 * ((i * 31 + d * 17) % 11) as f32
        });
        let mut kept: Vec<Option<u32>> = (0..80).map(|i| Some(if i % 2 == 0 { 1 } else { 0 })).collect();
        kept[78] = None;
        kept[79] = None;
        kept[3] = Some(1); // a known item keeps its category even against its embedding
        let groups = kept_categories(&emb, &kept);
        assert_eq!(groups[3], 1);
        assert_eq!((groups[78], groups[79]), (1, 0));
        assert!((0..78).filter(|&i| i != 3).all(|i| Some(groups[i]) == kept[i]));
    }
}

//! Item-name similarity: TF-IDF vectors over the words of item names.
//!
//! Look-alike designs ("LUNCH BAG RED RETROSPOT", "JUMBO BAG RED RETROSPOT") are often bought
//! together, and a name still says something about items too new or too rare for the
//! co-purchase counts. Words are lowercased alphanumeric runs of two or more characters that are
//! not plain numbers; a word's weight is its inverse document frequency over the catalog.

use std::collections::{BTreeMap, HashMap};

use crate::ItemIx;

/// TF-IDF name vectors of a catalog, with an inverted index for sparse dot products.
#[derive(Debug, Clone, Default)]
pub struct NameIndex {
    /// Per item: (word, weight), L2-normalized (empty when the item has no usable name).
    vectors: Vec<Vec<(u32, f32)>>,
    /// Per word: (item, weight).
    postings: Vec<Vec<(ItemIx, f32)>>,
}

fn words(name: &str) -> impl Iterator<Item = String> + '_ {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2 && !w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_lowercase)
}

impl NameIndex {
    /// Builds the index over item names (`None`: no name).
    pub fn new(names: &[Option<String>]) -> Self {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut docs: Vec<Vec<u32>> = Vec::with_capacity(names.len());
        for name in names {
            let mut ws: Vec<u32> = name
                .as_deref()
                .map(|n| {
                    words(n)
                        .map(|w| {
                            let next = vocab.len() as u32;
                            *vocab.entry(w).or_insert(next)
                        })
                        .collect()
                })
                .unwrap_or_default();
            ws.sort_unstable();
            ws.dedup();
            docs.push(ws);
        }
        let mut df = vec![0f32; vocab.len()];
        docs.iter().flatten().for_each(|&w| df[w as usize] += 1.0);
        let n = names.len().max(1) as f32;
        let mut postings = vec![Vec::new(); vocab.len()];
        let vectors = docs
            .into_iter()
            .enumerate()
            .map(|(i, ws)| {
                // a word every item shares tells nothing: idf 0
                let mut v: Vec<(u32, f32)> = ws.into_iter().map(|w| (w, (n / df[w as usize]).ln())).filter(|(_, x)| *x > 0.0).collect();
                let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|(_, x)| *x /= norm.max(1e-12));
                for &(w, x) in &v {
                    postings[w as usize].push((i as ItemIx, x));
                }
                v
            })
            .collect();
        NameIndex { vectors, postings }
    }

    /// For every item j: the cosine between j's name and the sum of the basket's name vectors,
    /// and the largest cosine between j's name and one basket item's name.
    pub fn features(&self, basket: &[ItemIx], n_items: usize) -> (Vec<f32>, Vec<f32>) {
        // ordered, so the float sums below come out the same on every run
        let mut centroid: BTreeMap<u32, f32> = BTreeMap::new();
        let mut best = vec![0f32; n_items];
        let mut pair = vec![0f32; n_items];
        let mut touched: Vec<usize> = Vec::new();
        for &i in basket {
            let Some(v) = self.vectors.get(i as usize) else { continue };
            for &(w, x) in v {
                *centroid.entry(w).or_default() += x;
                for &(j, y) in &self.postings[w as usize] {
                    if pair[j as usize] == 0.0 {
                        touched.push(j as usize);
                    }
                    pair[j as usize] += x * y;
                }
            }
            for &j in &touched {
                best[j] = best[j].max(pair[j]);
                pair[j] = 0.0;
            }
            touched.clear();
        }
        let norm = centroid.values().map(|x| x * x).sum::<f32>().sqrt();
        let mut basket_sim = vec![0f32; n_items];
        if norm > 0.0 {
            for (&w, &x) in &centroid {
                for &(j, y) in &self.postings[w as usize] {
                    basket_sim[j as usize] += x * y / norm;
                }
            }
        }
        (basket_sim, best)
    }
}

//! Item-name similarity: TF-IDF vectors over the words of item names.
//!
//! Look-alike designs ("LUNCH BAG RED RETROSPOT", "JUMBO BAG RED RETROSPOT") are often bought
//! together, and a name still says something about items too new or too rare for the
//! co-purchase counts. Words are lowercased alphanumeric runs of two or more characters that are
//! not plain numbers; a word's weight is its inverse document frequency over the catalog.

use std::collections::HashMap;

use crate::ItemIx;

/// TF-IDF name vectors of a catalog, with an inverted index for finding look-alikes.
#[derive(Debug, Clone, Default)]
pub struct NameIndex {
    /// Per item: (word, weight) by word, L2-normalized (empty when the item has no usable name).
    vectors: Vec<Vec<(u32, f32)>>,
    /// Per word: (item, weight), heaviest first (the shortest names holding the word).
    postings: Vec<Vec<(ItemIx, f32)>>,
}

/// Items read per basket word when looking for look-alikes.
pub const POSTINGS_PER_WORD: usize = 64;

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
        let vectors: Vec<Vec<(u32, f32)>> = docs
            .into_iter()
            .map(|ws| {
                // a word every item shares tells nothing: idf 0
                let mut v: Vec<(u32, f32)> = ws.into_iter().map(|w| (w, (n / df[w as usize]).ln())).filter(|(_, x)| *x > 0.0).collect();
                let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|(_, x)| *x /= norm.max(1e-12));
                v
            })
            .collect();
        let mut postings = vec![Vec::new(); vocab.len()];
        for (i, v) in vectors.iter().enumerate() {
            for &(w, x) in v {
                postings[w as usize].push((i as ItemIx, x));
            }
        }
        for p in &mut postings {
            p.sort_unstable_by(|a: &(ItemIx, f32), b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        NameIndex { vectors, postings }
    }

    /// Calls `f(j, s)` for items `j` whose names share words with the basket's (`profile`, from
    /// [`NameIndex::profile`]), `s` a part of their cosine with the basket's names together; at
    /// most [`POSTINGS_PER_WORD`] items per basket word (bounded work, whatever the catalog).
    pub fn look_alikes(&self, profile: &NameProfile, mut f: impl FnMut(ItemIx, f32)) {
        if profile.norm <= 0.0 {
            return;
        }
        for &(w, x) in &profile.centroid {
            for &(j, y) in self.postings[w as usize].iter().take(POSTINGS_PER_WORD) {
                f(j, x * y / profile.norm);
            }
        }
    }

    /// Sets `profile` to the basket's names together: the sum of their vectors (by word) and its
    /// norm, and each basket item's words (computed once per request; its buffers are reused).
    pub fn profile(&self, basket: &[ItemIx], profile: &mut NameProfile) {
        let words = &mut profile.words;
        words.clear();
        profile.items = 0;
        for (pos, v) in basket.iter().filter_map(|&i| self.vectors.get(i as usize)).enumerate() {
            words.extend(v.iter().map(|&(w, x)| (w, pos as u32, x)));
            profile.items = pos + 1;
        }
        // stable: by word, then in basket order, so each word's weights are added in basket
        // order and the float sums come out the same on every run
        words.sort_by_key(|&(w, _, _)| w);
        profile.centroid.clear();
        profile.starts.clear();
        for (k, &(w, _, x)) in words.iter().enumerate() {
            match profile.centroid.last_mut() {
                Some((last, sum)) if *last == w => *sum += x,
                _ => {
                    profile.centroid.push((w, x));
                    profile.starts.push(k as u32);
                }
            }
        }
        profile.starts.push(words.len() as u32);
        profile.norm = profile.centroid.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
    }

    /// For each of `items`: the cosine between its name and the basket's names together, and
    /// the largest cosine between its name and one basket item's name (`profile` is the
    /// basket's, from [`NameIndex::profile`]). Work: per item word, a binary search among the
    /// basket's words, then the basket items holding it.
    pub fn similarities(&self, profile: &NameProfile, items: &[ItemIx]) -> (Vec<f32>, Vec<f32>) {
        let mut basket_sim = vec![0f32; items.len()];
        let mut best = vec![0f32; items.len()];
        if profile.centroid.is_empty() {
            return (basket_sim, best);
        }
        // per basket item, its dot product with the current item's name
        let mut pair = vec![0f32; profile.items];
        let mut touched: Vec<usize> = Vec::new();
        let words = &profile.words;
        for (r, &j) in items.iter().enumerate() {
            let Some(v) = self.vectors.get(j as usize) else { continue };
            // in the order of j's words, as a dot product of the two sorted vectors would add
            for &(w, y) in v {
                if let Ok(k) = profile.centroid.binary_search_by_key(&w, |&(w, _)| w) {
                    basket_sim[r] += profile.centroid[k].1 * y / profile.norm;
                    let (start, end) = (profile.starts[k] as usize, profile.starts[k + 1] as usize);
                    for &(_, pos, x) in &words[start..end] {
                        if pair[pos as usize] == 0.0 {
                            touched.push(pos as usize);
                        }
                        pair[pos as usize] += x * y;
                    }
                }
            }
            for &pos in &touched {
                best[r] = best[r].max(pair[pos]);
                pair[pos] = 0.0;
            }
            touched.clear();
        }
        (basket_sim, best)
    }
}

/// The basket's name vectors summed (see [`NameIndex::profile`]).
#[derive(Debug, Clone, Default)]
pub struct NameProfile {
    /// (word, weight), by word.
    centroid: Vec<(u32, f32)>,
    norm: f32,
    /// Every basket item's words: (word, the item's position among the named basket items,
    /// weight), by word, then position.
    words: Vec<(u32, u32, f32)>,
    /// Where each `centroid` word's entries start in `words` (one more at the end: `words`'s length).
    starts: Vec<u32>,
    /// Basket items with a name vector.
    items: usize,
}

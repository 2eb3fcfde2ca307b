//! Hyperparameters: checked once, then saved with the model.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Embedding dimension.
    pub dim: usize,
    /// Passes over the weighted co-purchase pairs.
    pub epochs: f64,
    /// Upper bound on embedding steps.
    pub max_steps: usize,
    /// Pairs per embedding step.
    pub batch_size: usize,
    /// Negative samples per pair.
    pub negatives: usize,
    /// Adam learning rate of the embeddings.
    pub learning_rate: f64,
    /// Co-purchased items (and EASE weights) kept per item.
    pub max_neighbours: usize,
    /// EASE covers this many most-bought items (its inverse is cubic in it; 0 turns EASE off).
    pub ease_items: usize,
    /// λ is chosen on the Gram of this many most-bought items (a leading block of the whole).
    pub ease_search_items: usize,
    /// At most this many items beyond `ease_items` get EASE rows from blocks of
    /// co-purchase-connected items ([`crate::ease::fit_tail`]), kept only when validation finds
    /// EASE alone clearly better with them (0: never).
    pub ease_tail_items: usize,
    /// EASE regularization; 0 chooses it on the validation queries from
    /// [`crate::ease::LAMBDA_GRID`].
    pub ease_lambda: f64,
    /// Higher-order EASE: at most this many most co-bought item pairs become extra inputs;
    /// validation tries a quarter of them and all of them, and keeps pairs only when they rank
    /// better than plain EASE (0: plain EASE; so does a fixed `ease_lambda`).
    pub ease_pairs: usize,
    /// Share of the newest orders counted again as the recent period (the trend feature).
    pub recent_fraction: f64,
    /// Share of the newest training orders used to fit and calibrate the ranker.
    pub validation_fraction: f64,
    /// Queries drawn from those orders (at most).
    pub ranker_queries: usize,
    /// Hard negatives per ranker query: its first candidates, in the order the sources took
    /// turns gathering them (each source's favourites).
    pub ranker_hard_negatives: usize,
    /// Random negatives per ranker query, drawn from the rest of its candidates.
    pub ranker_random_negatives: usize,
    /// Most candidates ranked per request (the union of the candidate sources is cut there);
    /// the trainer fits the ranker on the same candidate sets.
    pub candidate_budget: usize,
    /// Also fit a discovery ranker on the novel-target validation queries, kept when it beats
    /// the general ranker there (off by default: on the shared logs and the synthetic one it tied,
    /// for ~12 s more training on online_retail).
    pub discovery_ranker: bool,
    /// Embedding neighbours listed per item (the embedding candidate sources; 0: none).
    pub neighbours_per_item: usize,
    /// Embedding neighbours are found among this many most-bought items (exact search: time
    /// items × this × dim).
    pub neighbour_targets: usize,
    /// Ranker training epochs.
    pub ranker_epochs: usize,
    /// Hidden ReLU units of the ranker (0: linear only; otherwise a linear ranker is fitted too
    /// and the one that ranks the validation queries better is kept).
    pub ranker_hidden: usize,
    /// Share of the ranker queries held out for calibration and validation metrics.
    pub calibration_share: f64,
    /// Orders with more distinct items than this count toward popularity but not toward pair
    /// statistics, EASE or the ranker's queries (see `AggregateConfig::max_order_items`).
    pub max_order_items: usize,
    /// Refit aggregates and embeddings on all training orders after fitting the ranker.
    pub refit: bool,
    /// Also fit one ranker per feature group left out ([`crate::Fitted::ablations`]).
    pub ablation: bool,
    /// Latent categories for a catalog without categories (0: about one per 30 items, at most
    /// 256; see [`crate::latent::auto_kinds`]). Ignored when the catalog has categories.
    pub latent_categories: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 42,
            dim: 32,
            epochs: 3.0,
            max_steps: 1500,
            batch_size: 2048,
            negatives: 5,
            learning_rate: 0.02,
            max_neighbours: 200,
            ease_items: 5000,
            ease_lambda: 0.0,
            ease_search_items: 2000,
            ease_tail_items: 50_000,
            ease_pairs: 512,
            recent_fraction: 0.1,
            validation_fraction: 0.1,
            ranker_queries: 6000,
            ranker_hard_negatives: 600,
            ranker_random_negatives: 100,
            candidate_budget: xsell_core::retrieval::DEFAULT_BUDGET,
            discovery_ranker: false,
            neighbours_per_item: 50,
            neighbour_targets: 20_000,
            ranker_epochs: 30,
            ranker_hidden: 16,
            calibration_share: 0.3,
            max_order_items: 1000,
            refit: true,
            ablation: false,
            latent_categories: 0,
        }
    }
}

/// A [`TrainConfig`] whose every field was checked ([`TrainConfig::check`]): what the trainer
/// takes, so an unchecked configuration cannot reach it (linfa's checked/unchecked parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(transparent)]
pub struct ValidTrainConfig(TrainConfig);

impl ValidTrainConfig {
    /// The aggregate pass's settings these hyperparameters imply (no pair Gram rows when λ is
    /// fixed: the pairs are only chosen on validation).
    pub fn aggregate_config(&self) -> xsell_core::aggregate::AggregateConfig {
        xsell_core::aggregate::AggregateConfig {
            max_neighbours: self.max_neighbours,
            gram_items: self.ease_items,
            gram_pairs: if self.ease_lambda > 0.0 { 0 } else { self.ease_pairs },
            recent_fraction: self.recent_fraction,
            max_order_items: self.max_order_items,
        }
    }
}

impl std::ops::Deref for ValidTrainConfig {
    type Target = TrainConfig;
    fn deref(&self) -> &TrainConfig {
        &self.0
    }
}

impl TrainConfig {
    /// Checks every field ([`TrainConfig::validate`]) into the type the trainer takes.
    pub fn check(self) -> Result<ValidTrainConfig> {
        self.validate()?;
        Ok(ValidTrainConfig(self))
    }

    /// Reads a JSON object holding any subset of the keys (the rest keep their defaults) and
    /// validates it. Unknown keys are refused with the list of known ones; so is anything but an
    /// object (serde would take an array positionally).
    pub fn from_json(text: &str) -> Result<ValidTrainConfig> {
        TrainConfig::parse_json(text)?.check()
    }

    /// [`TrainConfig::from_json`] without the range checks, for callers that override fields
    /// before [`TrainConfig::check`].
    pub fn parse_json(text: &str) -> Result<TrainConfig> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| TrainError::Config { name: "config", reason: format!("not valid JSON: {e}") })?;
        if !value.is_object() {
            return Err(TrainError::Config {
                name: "config",
                reason: "must be a JSON object of hyperparameters, e.g. {\"dim\": 32}".into(),
            });
        }
        serde_json::from_value(value.clone()).map_err(|e| {
            // serde names an unknown key but not the key whose value has the wrong type: find it
            let bad = value.as_object().into_iter().flatten().find(|(k, v)| {
                serde_json::from_value::<TrainConfig>(serde_json::Value::Object([((*k).clone(), (*v).clone())].into_iter().collect()))
                    .is_err()
            });
            let reason = match bad {
                Some((k, v)) => format!("key `{k}` = {v}: {e}"),
                None => e.to_string(),
            };
            TrainError::Config { name: "config", reason }
        })
    }

    /// Checks every hyperparameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| Err(TrainError::Config { name, reason: reason.into() });
        if !(1..=512).contains(&self.dim) {
            return bad("dim", "must be within 1..=512");
        }
        if !(self.epochs.is_finite() && self.epochs >= 0.0) {
            return bad("epochs", "must be a non-negative number");
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return bad("batch_size", "must be within 1..=1048576");
        }
        if self.negatives == 0 || self.negatives > 100 {
            return bad("negatives", "must be within 1..=100");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate < 10.0) {
            return bad("learning_rate", "must be within (0, 10)");
        }
        if self.max_neighbours == 0 {
            return bad("max_neighbours", "must be at least 1");
        }
        if self.ease_items > 20_000 {
            return bad("ease_items", "must be at most 20000 (the EASE inverse is dense: items² memory, items³ time)");
        }
        if self.ease_pairs > 5000 {
            return bad("ease_pairs", "must be at most 5000 (pairs join the dense EASE inverse)");
        }
        if self.ease_search_items == 0 {
            return bad("ease_search_items", "must be at least 1");
        }
        if !(self.ease_lambda.is_finite() && self.ease_lambda >= 0.0) {
            return bad("ease_lambda", "must be a non-negative number (0: chosen by validation)");
        }
        if !(self.recent_fraction > 0.0 && self.recent_fraction <= 1.0) {
            return bad("recent_fraction", "must be within (0, 1]");
        }
        if self.latent_categories > 100_000 {
            return bad("latent_categories", "must be at most 100000 (0: chosen from the catalog's size)");
        }
        if !(0.0..0.9).contains(&self.validation_fraction) {
            return bad("validation_fraction", "must be within [0, 0.9)");
        }
        if !(0.0..1.0).contains(&self.calibration_share) {
            return bad("calibration_share", "must be within [0, 1)");
        }
        if self.epochs > 1000.0 {
            return bad("epochs", "must be at most 1000");
        }
        if self.max_steps == 0 || self.max_steps > 10_000_000 {
            return bad("max_steps", "must be within 1..=10000000");
        }
        if self.max_neighbours > 100_000 {
            return bad("max_neighbours", "must be at most 100000");
        }
        if !(1..=1_000_000).contains(&self.ranker_queries) {
            return bad("ranker_queries", "must be within 1..=1000000");
        }
        if self.ranker_hard_negatives > 100_000 {
            return bad("ranker_hard_negatives", "must be at most 100000");
        }
        if self.ranker_random_negatives > 100_000 {
            return bad("ranker_random_negatives", "must be at most 100000");
        }
        if !(1..=10_000).contains(&self.ranker_epochs) {
            return bad("ranker_epochs", "must be within 1..=10000");
        }
        if self.ranker_hidden > 1024 {
            return bad("ranker_hidden", "must be at most 1024 (0: linear only)");
        }
        if !(2..=1_000_000).contains(&self.max_order_items) {
            return bad("max_order_items", "must be within 2..=1000000");
        }
        if !(1..=100_000).contains(&self.candidate_budget) {
            return bad("candidate_budget", "must be within 1..=100000");
        }
        if self.neighbours_per_item > 1000 {
            return bad("neighbours_per_item", "must be at most 1000");
        }
        if self.neighbour_targets == 0 {
            return bad("neighbour_targets", "must be at least 1");
        }
        if self.ranker_hard_negatives + self.ranker_random_negatives == 0 {
            return bad("ranker_hard_negatives", "the ranker needs at least one negative per query");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::TrainConfig;

    #[test]
    fn hyperparameter_files_are_objects_of_known_keys_within_range() {
        assert_eq!(TrainConfig::default().check().unwrap(), super::ValidTrainConfig::default(), "the defaults are valid");
        assert_eq!(TrainConfig::from_json(r#"{"dim": 8}"#).unwrap().dim, 8);
        let e = TrainConfig::from_json(r#"{"bogus_key": 1}"#).unwrap_err().to_string();
        assert!(e.contains("bogus_key") && e.contains("epochs"), "names the key and the known ones: {e}");
        let e = TrainConfig::from_json(r#"{"epoch": 3}"#).unwrap_err().to_string();
        assert!(e.contains("`epoch`"), "a typo is refused: {e}");
        let e = TrainConfig::from_json("[7, 8]").unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
        for (key, value) in [("ranker_hidden", "100000000"), ("ranker_epochs", "1000000000"), ("max_steps", "18446744073709551615")] {
            let e = TrainConfig::from_json(&format!("{{\"{key}\": {value}}}")).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        for bad in [r#"{"max_order_items": 1}"#, r#"{"candidate_budget": 0}"#, r#"{"neighbour_targets": 0}"#, r#"{"candidate_budget": -5}"#]
        {
            let key = bad.split('"').nth(1).unwrap();
            let e = TrainConfig::from_json(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}

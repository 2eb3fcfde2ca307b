//! Protobuf ⇄ core conversions, and core errors → gRPC status.

use tonic::Status;
use xsell_core::model::DriverSource;
use xsell_core::{Objective, RankQuery, Ranking, Suppression, Touchpoint, Withheld};
use xsell_model::Bundle;
use xsell_proto::v1;

/// A request as a core query (its lists are moved, not copied).
pub fn query(req: v1::RankRequest) -> Result<RankQuery, Status> {
    let touchpoint = match v1::Touchpoint::try_from(req.touchpoint) {
        Ok(v1::Touchpoint::Unspecified) => Touchpoint::Unspecified,
        Ok(v1::Touchpoint::ProductPage) => Touchpoint::ProductPage,
        Ok(v1::Touchpoint::Cart) => Touchpoint::Cart,
        Ok(v1::Touchpoint::Checkout) => Touchpoint::Checkout,
        Ok(v1::Touchpoint::PostPurchase) => Touchpoint::PostPurchase,
        Ok(v1::Touchpoint::Email) => Touchpoint::Email,
        Err(_) => return Err(Status::invalid_argument(format!("touchpoint {} is not a known Touchpoint", req.touchpoint))),
    };
    let objective = match v1::Objective::try_from(req.objective) {
        Ok(v1::Objective::Unspecified) => None,
        Ok(v1::Objective::Probability) => Some(Objective::Probability),
        Ok(v1::Objective::ExpectedValue) => Some(Objective::ExpectedValue),
        Err(_) => return Err(Status::invalid_argument(format!("objective {} is not a known Objective", req.objective))),
    };
    if req.customer_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(Status::invalid_argument("customer_id is set but empty; leave it unset for an anonymous customer"));
    }
    if !req.min_probability.is_finite() {
        return Err(Status::invalid_argument("min_probability must be a finite number within [0, 1]"));
    }
    let q = RankQuery {
        customer_id: req.customer_id,
        basket: req.basket,
        k: req.k as usize,
        touchpoint,
        exclude: req.exclude,
        allow: req.candidates,
        categories: req.categories,
        min_probability: req.min_probability,
        max_per_category: req.max_per_category as usize,
        allow_substitutes: req.allow_substitutes,
        new_to_customer: req.new_to_customer,
        objective,
        explain: req.explain,
    };
    q.validate().map_err(core_status)?;
    Ok(q)
}

/// Maps a core error to a status: every core error is the caller's.
pub fn core_status(e: xsell_core::Error) -> Status {
    match e {
        xsell_core::Error::Invalid { .. } | xsell_core::Error::EmptyLog => Status::invalid_argument(e.to_string()),
        xsell_core::Error::Inconsistent(_) => {
            tracing::error!(error = %e, "inconsistent model");
            Status::internal("the served model is inconsistent")
        }
        _ => Status::internal("unexpected error"),
    }
}

/// A core ranking as a response.
pub fn response(bundle: &Bundle, ranking: Ranking, request_id: String) -> v1::RankResponse {
    let model = &bundle.model;
    let items = &model.parts().items;
    v1::RankResponse {
        items: ranking
            .items
            .iter()
            .map(|r| {
                let (reason_item, reason) = model.explain(r.reason);
                let i = r.item as usize;
                v1::RankedItem {
                    item_id: items.ids[i].clone(),
                    item_name: items.names[i].clone().unwrap_or_default(),
                    category: items.categories[i].clone().unwrap_or_default(),
                    score: r.score,
                    probability: r.probability,
                    reason_item_id: reason_item.unwrap_or_default().to_owned(),
                    reason,
                    drivers: r
                        .drivers
                        .iter()
                        .map(|d| match d.source {
                            DriverSource::BasketItem(b) => {
                                v1::Driver { item_id: items.ids[b as usize].clone(), history: false, share: d.share }
                            }
                            DriverSource::History => v1::Driver { item_id: String::new(), history: true, share: d.share },
                        })
                        .collect(),
                }
            })
            .collect(),
        model_version: bundle.manifest.version.clone(),
        request_id,
        customer_known: ranking.customer_known,
        unknown_items: ranking.unknown_items,
        suppressed_reason: ranking.suppressed.map(|s| s.describe().to_owned()).unwrap_or_default(),
        suppression: match ranking.suppressed {
            None => v1::Suppression::None,
            Some(Suppression::ReturnRisk) => v1::Suppression::ReturnRisk,
            Some(Suppression::BelowMinProbability) => v1::Suppression::BelowMinProbability,
            Some(Suppression::NoEligibleItem) => v1::Suppression::NoEligibleItem,
        } as i32,
        withheld: ranking.withheld.iter().map(|&w| withheld(w)).collect(),
    }
}

fn withheld(w: Withheld) -> v1::Withheld {
    let (rule, count) = match w {
        Withheld::Substitutes(n) => (v1::WithheldRule::Substitute, n),
        Withheld::CategoryCap(n) => (v1::WithheldRule::CategoryCap, n),
        Withheld::BelowMinProbability(n) => (v1::WithheldRule::MinProbability, n),
        Withheld::OfferBudget(n) => (v1::WithheldRule::OfferBudget, n),
        Withheld::ReturnLimit(n) => (v1::WithheldRule::ReturnLimit, n),
    };
    v1::Withheld { rule: rule as i32, count }
}

/// The model description. It holds no filesystem path: the training input is named by its
/// file name alone (the server's callers need not know the trainer's disk layout).
pub fn model_info(bundle: &Bundle) -> v1::ModelInfoResponse {
    let mut m = bundle.manifest.clone();
    m.input.source = std::path::Path::new(&m.input.source).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let m = &m;
    v1::ModelInfoResponse {
        name: m.name.clone(),
        version: m.version.clone(),
        format_version: m.format_version,
        created_at: m.created_at.clone(),
        items: m.n_items as u64,
        customers: m.n_customers as u64,
        dim: m.dim as u32,
        input_sha256: m.input.sha256.clone(),
        manifest_json: serde_json::to_string(m).unwrap_or_default(),
    }
}

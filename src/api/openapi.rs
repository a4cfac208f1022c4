//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{evaluations, models, runs};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "safedrift", description = "Safety drift of fine-tuned checkpoints: models, lineages, runs, per-prompt results, alerts, evaluations. Every route needs `Authorization: Bearer <token>` when the daemon has a token configured."),
    paths(
        models::list_models,
        models::timeline,
        models::lineages::list_lineages,
        models::list_checkpoints,
        models::list_quarantine,
        runs::list_runs,
        runs::get_run,
        runs::get_progress,
        runs::list_results,
        runs::list_alerts,
        runs::get_alert,
        evaluations::create_evaluation,
        evaluations::get_evaluation,
        document,
    ),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", body = serde_json::Value),
              (status = 401, description = "Missing or wrong token", body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc)
}

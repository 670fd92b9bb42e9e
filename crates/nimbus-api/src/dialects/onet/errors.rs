//! ONET's error bodies, which are Django REST Framework's (`dialects/common/drf.rs`), with 400/401/403/404 as
//! the overview documents.

use axum::http::StatusCode;

use crate::dialects::common::drf::{drf_provider, DrfDialect};

drf_provider!(Onet, OnetError, OnetResult);

impl DrfDialect for Onet {
    const AUTH_SCHEME: &'static str = "Bearer";
    const INVALID_TOKEN: &'static str = "Given token not valid for any token type";

    fn field_name(engine_field: &str) -> String {
        let (head, rest) = match engine_field.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (engine_field, None),
        };
        let head = match head {
            "instance_type" => "size_id",
            "template" => "image_id",
            "labels" => "tags",
            other => other,
        };
        match rest {
            Some(r) => format!("{head}.{r}"),
            None => head.to_string(),
        }
    }

    fn refusal(message: String) -> OnetError {
        OnetError::detail(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(kind: &str) -> OnetError {
        match kind {
            "instance" => no_instance(),
            _ => OnetError::not_found(),
        }
    }
}

/// DRF's `NotFound` for a detail route (DRF >= 3.15 words it after the model).
pub fn no_instance() -> OnetError {
    OnetError::detail(StatusCode::NOT_FOUND, "No Instance matches the given query.")
}

//! SharedCloud's error bodies, which are Django REST Framework's (`dialects/common/drf.rs`).

use crate::dialects::common::drf::{self, DrfDialect, DrfError};

/// SharedCloud's words where DRF's providers differ.
pub struct SharedCloud;

pub type ScError = DrfError<SharedCloud>;
pub type ScResult<T> = Result<T, ScError>;
pub type FieldErrors = drf::FieldErrors<SharedCloud>;

impl DrfDialect for SharedCloud {
    /// DRF's TokenAuthentication.
    const AUTH_SCHEME: &'static str = "Token";
    const INVALID_TOKEN: &'static str = "Invalid token.";

    fn field_name(engine_field: &str) -> String {
        match engine_field {
            "price_hourly" => "ask_price",
            "instance_type" | "gpu_model" => "gpu",
            other => other,
        }
        .to_string()
    }

    fn refusal(message: String) -> ScError {
        ScError::non_field(message)
    }
}

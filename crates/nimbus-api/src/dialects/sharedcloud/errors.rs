//! SharedCloud's error bodies, which are Django REST Framework's (`dialects/common/drf.rs`).

use crate::dialects::common::drf::{drf_provider, DrfDialect};

drf_provider!(SharedCloud, ScError, ScResult);

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

//! Reserved addresses (`/v1/reserved-addresses`): addresses of the instance network a project holds apart
//! from its instances. An instance created with `reserved_address_id` gets the address; it goes back to
//! the reservation, not to the network, when the instance is deleted. Bookkeeping on the store only: no
//! host is involved, so the calls answer the reservation, not an operation.

use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nimbus_core::networking::ReservedAddress;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::instances::parse_uuid;
use super::views::ErrorBody;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateReservedAddressParams {
    /// Default: `reserved-<address>`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 255)]
    pub name: Option<String>,
    /// An address of the instance network to reserve; default: the next free one.
    #[schema(value_type = Option<String>, example = "10.213.0.50")]
    pub ip_address: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservedAddressView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub ip_address: Ipv4Addr,
    /// The private network whose address it is (reserved through a dialect that has private networks);
    /// absent: the instance network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_id: Option<Uuid>,
    /// The instance created with it, while that instance exists.
    pub instance_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&ReservedAddress> for ReservedAddressView {
    fn from(r: &ReservedAddress) -> Self {
        ReservedAddressView {
            id: r.id,
            name: r.name.clone(),
            ip_address: r.ip,
            network_id: r.network_id,
            instance_id: r.instance_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservedAddressList {
    pub items: Vec<ReservedAddressView>,
}

#[utoipa::path(post, path = "/v1/reserved-addresses", operation_id = "create_reserved_address", tag = "networking", request_body = CreateReservedAddressParams,
    responses((status = 201, body = ReservedAddressView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the address is taken, or the network is full")))]
pub async fn create(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    JsonBody(p): JsonBody<CreateReservedAddressParams>,
) -> ApiResult<(StatusCode, Json<ReservedAddressView>)> {
    let r = app.engine.create_reserved_address(&ctx, p.name, None, p.ip_address, false).await?;
    Ok((StatusCode::CREATED, Json((&r).into())))
}

#[utoipa::path(get, path = "/v1/reserved-addresses", operation_id = "list_reserved_addresses", tag = "networking", responses((status = 200, body = ReservedAddressList)))]
pub async fn list(State(app): State<AppState>, Caller(ctx): Caller) -> ApiResult<Json<ReservedAddressList>> {
    let all = app.engine.list_reserved_addresses(&ctx).await?;
    Ok(Json(ReservedAddressList { items: all.iter().map(Into::into).collect() }))
}

#[utoipa::path(get, path = "/v1/reserved-addresses/{id}", operation_id = "get_reserved_address", tag = "networking", params(("id" = Uuid, Path)),
    responses((status = 200, body = ReservedAddressView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ReservedAddressView>> {
    let r = app.engine.reserved_address(&ctx, parse_uuid("reserved address", &id)?).await?;
    Ok(Json((&r).into()))
}

#[utoipa::path(delete, path = "/v1/reserved-addresses/{id}", operation_id = "delete_reserved_address", tag = "networking", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "an instance holds it")))]
pub async fn delete(State(app): State<AppState>, Caller(ctx): Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.engine.delete_reserved_address(&ctx, parse_uuid("reserved address", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

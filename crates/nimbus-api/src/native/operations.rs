//! `/v1/operations` and the `/v1/events` stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::instances::parse_uuid;
use super::views::*;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetOperationQuery {
    /// Block up to this many seconds (at most 300) until the operation ends.
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/operations/{id}", operation_id = "get_operation", tag = "operations", params(("id" = Uuid, Path), GetOperationQuery),
    responses((status = 200, body = OperationView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<GetOperationQuery>,
) -> ApiResult<Json<OperationView>> {
    let id = parse_uuid("operation", &id)?;
    let op = match q.wait {
        Some(secs) => app.engine.wait_operation(&ctx, id, Duration::from_secs(secs)).await?,
        None => app.engine.operation(&ctx, id).await?,
    };
    Ok(Json((&op).into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListOperationsQuery {
    /// Only operations on this instance.
    pub target: Option<Uuid>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/operations", operation_id = "list_operations", tag = "operations", params(ListOperationsQuery),
    responses((status = 200, body = OperationList)))]
pub async fn list(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    QueryParams(q): QueryParams<ListOperationsQuery>,
) -> ApiResult<Json<OperationList>> {
    let page = app.engine.list_operations(&ctx, q.target, q.limit.unwrap_or(100), q.page_token.as_deref()).await?;
    Ok(Json(OperationList {
        items: page.items.iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay events after this sequence number (0: from the beginning). Without it, only new events.
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", operation_id = "stream_events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "Server-Sent Events: `id` is the sequence number, `event` the kind (operation.created, operation.updated, instance.created, instance.updated, instance.deleted), `data` the JSON event with its actor (key, request id, source) — the audit log", content_type = "text/event-stream")))]
pub async fn events(
    State(app): State<AppState>,
    Caller(ctx): Caller,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i64>().ok());
    let start = match q.after.or(last_event_id) {
        Some(seq) if seq >= 0 => seq,
        Some(_) => return Err(ApiError::bad_request("invalid after: must be 0 or more")),
        None => app.engine.latest_event_seq(&ctx).await?,
    };
    let subscription = app.engine.subscribe_events(&ctx, start)?;
    let stream = stream::unfold(subscription, |mut subscription| async move {
        let e = subscription.next().await?;
        let sse = SseEvent::default()
            .id(e.seq.to_string())
            .event(e.kind.clone())
            .json_data(&e)
            .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"));
        Some((Ok(sse), subscription))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

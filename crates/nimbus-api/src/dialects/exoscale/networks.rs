//! Private networks and elastic IPs as Exoscale shows them, and their `:attach`/`:detach` of instances.
//! Every change is done at request time and answered with a finished operation referring to the
//! network or the elastic IP. Attachments are the engine's bookkeeping: no second NIC, no NAT (yet).

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::Json;
use nimbus_core::labels::Labels;
use nimbus_core::networking::AddressRange;
use nimbus_engine::PrivateNetworkSpec;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use super::errors::{ExoError, ExoResult};
use super::handlers::{receipt, ReverseDnsBody};
use super::resources::InstanceBody;
use super::views;
use crate::AppState;

const NETWORK: &str = "Private network";
const ELASTIC_IP: &str = "Elastic IP";

/// The finished operation of a change to the `kind` (`private-network`, `elastic-ip`) `id`.
async fn done(app: &AppState, signed: &Signed, kind: &str, id: uuid::Uuid) -> ExoResult<Json<Value>> {
    receipt(app, &signed.ctx, views::reference(kind, id, &id.to_string())).await
}

// Private networks.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct NetworkBody {
    name: Option<String>,
    description: Option<String>,
    labels: Option<Labels>,
    start_ip: Option<Ipv4Addr>,
    end_ip: Option<Ipv4Addr>,
    netmask: Option<Ipv4Addr>,
    /// DHCP options (DNS servers, NTP servers, routers, domain search): Nimbus serves no DHCP yet.
    options: Option<Value>,
}

impl NetworkBody {
    /// The range: all three addresses or none (an unmanaged network).
    fn range(&self) -> ExoResult<Option<Option<AddressRange>>> {
        match (self.start_ip, self.end_ip, self.netmask) {
            (None, None, None) => Ok(None),
            (Some(s), Some(e), Some(m)) => Ok(Some(Some(AddressRange::new(s, e, m)?))),
            _ => Err(ExoError::bad_request("Invalid request body: give start-ip, end-ip and netmask together")),
        }
    }

    fn spec(self) -> ExoResult<PrivateNetworkSpec> {
        if self.options.as_ref().is_some_and(|o| o.as_object().is_none_or(|m| !m.is_empty())) {
            return Err(ExoError::bad_request("Invalid parameter options: DHCP options are not available"));
        }
        let range = self.range()?;
        Ok(PrivateNetworkSpec { name: self.name, description: self.description, labels: self.labels, range })
    }
}

pub async fn list_private_networks(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let items: Vec<Value> =
        app.engine.list_private_networks(&signed.ctx).await?.iter().map(views::private_network).collect();
    Ok(Json(json!({ "private-networks": items })))
}

pub async fn create_private_network(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: NetworkBody = signed.json()?;
    if body.name.is_none() {
        return Err(ExoError::bad_request("Missing parameter name"));
    }
    let n = app.engine.create_private_network(&signed.ctx, body.spec()?).await?;
    done(&app, &signed, "private-network", n.id).await
}

pub async fn get_private_network(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    Ok(Json(views::private_network(&app.engine.private_network(&signed.ctx, signed.id(NETWORK)?).await?)))
}

pub async fn delete_private_network(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(NETWORK)?;
    app.engine.delete_private_network(&signed.ctx, id).await?;
    done(&app, &signed, "private-network", id).await
}

/// `PUT /v2/private-network/{id}` (update) and `{id}:attach|:detach|:update-ip`.
pub async fn put_private_network(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let (id, action) = signed.id_and_action(NETWORK)?;
    let Some(action) = action else {
        app.engine.update_private_network(ctx, id, signed.json::<NetworkBody>()?.spec()?).await?;
        return done(&app, &signed, "private-network", id).await;
    };
    let body: InstanceBody = signed.json()?;
    let instance = body.instance_id()?;
    match action {
        "attach" | "update-ip" => {
            app.engine.attach_private_network(ctx, id, instance, body.ip, action == "update-ip").await?;
        }
        "detach" if body.ip.is_some() => {
            return Err(ExoError::bad_request("Invalid parameter ip: detach takes none"));
        }
        "detach" => {
            app.engine.detach_private_network(ctx, id, instance).await?;
        }
        _ => return Err(ExoError::not_found("Operation")),
    }
    done(&app, &signed, "private-network", id).await
}

// Elastic IPs.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ElasticIpBody {
    description: Option<String>,
    labels: Option<Labels>,
    addressfamily: Option<String>,
    healthcheck: Option<Value>,
}

impl ElasticIpBody {
    fn check(&self) -> ExoResult<()> {
        match self.addressfamily.as_deref() {
            None | Some("inet4") => {}
            Some("inet6") => {
                return Err(ExoError::bad_request("Invalid parameter addressfamily: IPv6 is not available"))
            }
            Some(other) => {
                return Err(ExoError::bad_request(format!(
                    "Invalid parameter addressfamily: {other:?} is not one of inet4, inet6"
                )))
            }
        }
        if self.healthcheck.is_some() {
            // A managed elastic IP moves between instances by health; Nimbus routes nothing to them.
            return Err(ExoError::bad_request("Invalid parameter healthcheck: managed elastic IPs are not available"));
        }
        Ok(())
    }
}

pub async fn list_elastic_ips(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let items: Vec<Value> = app.engine.list_elastic_ips(&signed.ctx).await?.iter().map(views::elastic_ip).collect();
    Ok(Json(json!({ "elastic-ips": items })))
}

pub async fn create_elastic_ip(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let body: ElasticIpBody = signed.json()?;
    body.check()?;
    let labels = body.labels.unwrap_or_default();
    let e = app.engine.create_elastic_ip(&signed.ctx, body.description.as_deref().unwrap_or(""), labels).await?;
    done(&app, &signed, "elastic-ip", e.id).await
}

pub async fn get_elastic_ip(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    Ok(Json(views::elastic_ip(&app.engine.elastic_ip(&signed.ctx, signed.id(ELASTIC_IP)?).await?)))
}

pub async fn delete_elastic_ip(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(ELASTIC_IP)?;
    app.engine.delete_elastic_ip(&signed.ctx, id).await?;
    done(&app, &signed, "elastic-ip", id).await
}

/// `PUT /v2/elastic-ip/{id}` (update) and `{id}:attach|:detach`.
pub async fn put_elastic_ip(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let ctx = &signed.ctx;
    let (id, action) = signed.id_and_action(ELASTIC_IP)?;
    let Some(action) = action else {
        let body: ElasticIpBody = signed.json()?;
        if body.addressfamily.is_some() {
            return Err(ExoError::bad_request("Invalid parameter addressfamily: it cannot change"));
        }
        body.check()?;
        app.engine.update_elastic_ip(ctx, id, body.description, body.labels).await?;
        return done(&app, &signed, "elastic-ip", id).await;
    };
    let body: InstanceBody = signed.json()?;
    if body.ip.is_some() {
        return Err(ExoError::bad_request("Invalid parameter ip: an elastic IP has its own"));
    }
    let instance = body.instance_id()?;
    match action {
        "attach" => app.engine.attach_elastic_ip(ctx, id, instance).await?,
        "detach" => app.engine.detach_elastic_ip(ctx, id, instance).await?,
        _ => return Err(ExoError::not_found("Operation")),
    };
    done(&app, &signed, "elastic-ip", id).await
}

// Reverse DNS of an elastic IP: its PTR name, kept on the elastic IP's record.

pub async fn get_elastic_ip_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let eip = app.engine.elastic_ip(&signed.ctx, signed.id(ELASTIC_IP)?).await?;
    eip.reverse_dns
        .map(|name| Json(json!({ "domain-name": name })))
        .ok_or_else(|| ExoError::not_found("Reverse DNS record"))
}

pub async fn set_elastic_ip_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(ELASTIC_IP)?;
    let name = signed.json::<ReverseDnsBody>()?.domain_name()?;
    app.engine.set_elastic_ip_reverse_dns(&signed.ctx, id, Some(name)).await?;
    done(&app, &signed, "elastic-ip", id).await
}

pub async fn delete_elastic_ip_reverse_dns(State(app): State<AppState>, signed: Signed) -> ExoResult<Json<Value>> {
    let id = signed.id(ELASTIC_IP)?;
    app.engine.set_elastic_ip_reverse_dns(&signed.ctx, id, None).await?;
    done(&app, &signed, "elastic-ip", id).await
}

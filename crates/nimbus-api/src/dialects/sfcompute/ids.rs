//! SF Compute ids (`inst_…`, `wksp_…`, `image_…`, ...): stable aliases of Nimbus's ids, and the lookups
//! that turn them (or resource paths) back into Nimbus resources.
//!
//! An instance created through SF gets a random id stored with it in the create's transaction (SF names an
//! unnamed instance after it). Every other resource's SF id is derived from its UUID, reversibly: 21 nanoid
//! characters carry 126 bits, which is the UUID less its two fixed variant bits. So reading never has to
//! store an id, and every server derives the same one.

use nimbus_core::instance::Instance;
use nimbus_engine::{Context, Engine, InstanceFilter};
use uuid::Uuid;

use super::errors::{SfError, SfResult};

/// Alias kinds in the engine's alias table, one per SF resource type.
pub const INSTANCE: &str = "sfc.instance";
pub const WORKSPACE: &str = "sfc.workspace";
pub const CAPACITY: &str = "sfc.capacity";
pub const POOL: &str = "sfc.pool";
pub const IMAGE: &str = "sfc.image";
pub const INSTANCE_SKU: &str = "sfc.instance_sku";

/// The prefix SF puts on ids of each kind.
pub fn prefix(kind: &str) -> &'static str {
    match kind {
        INSTANCE => "inst_",
        WORKSPACE => "wksp_",
        CAPACITY => "cap_",
        POOL => "pool_",
        IMAGE => "image_",
        INSTANCE_SKU => "isku_",
        _ => "",
    }
}

/// Legacy prefixes SF accepts on read but never emits, and the current prefix each stands for.
const LEGACY: &[(&str, &str)] = &[("vm_", "inst_"), ("vmi_", "image_"), ("clus_", "isku_")];

/// nanoid's URL-safe alphabet: 64 symbols, so 6 random bits pick one without bias.
const ALPHABET: &[u8; 64] = b"useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict";

/// 21 random nanoid characters, as SF generates them (v4 UUIDs are the randomness at hand here).
pub fn nanoid() -> String {
    let mut bytes = Vec::with_capacity(32);
    while bytes.len() < 21 {
        let u = Uuid::new_v4();
        // Bytes 6 and 8 carry the UUID version and variant bits, which are not random.
        bytes.extend(u.as_bytes().iter().enumerate().filter(|(i, _)| *i != 6 && *i != 8).map(|(_, b)| *b));
    }
    bytes.iter().take(21).map(|b| ALPHABET[(b & 63) as usize] as char).collect()
}

/// A fresh id of the kind (`inst_…`), for the engine to store the first time it is asked.
pub fn generate(kind: &str) -> String {
    format!("{}{}", prefix(kind), nanoid())
}

/// The SF id of a Nimbus resource: the one stored with it, else the one derived from its UUID.
pub async fn alias_of(engine: &Engine, kind: &str, id: Uuid) -> SfResult<String> {
    Ok(engine.alias_or(kind, id, || derive(kind, id)).await?)
}

/// The SF id derived from a UUID: its 128 bits less the two variant bits (RFC 9562 UUIDs all have `10`
/// there), six bits per nanoid character, most significant first.
pub fn derive(kind: &str, id: Uuid) -> String {
    let bits = id.as_u128();
    // Bits 63 and 62 (counting from the least significant) are the variant: squeeze them out.
    let packed = ((bits >> 64) << 62) | (bits & ((1u128 << 62) - 1));
    let chars: String = (0..21).rev().map(|i| ALPHABET[((packed >> (i * 6)) & 63) as usize] as char).collect();
    format!("{}{chars}", prefix(kind))
}

/// The UUID a derived SF id stands for (any well-formed 21 characters decode to one; it may name nothing).
fn underive(rest: &str) -> Option<Uuid> {
    if rest.len() != 21 {
        return None;
    }
    let mut packed: u128 = 0;
    for b in rest.bytes() {
        packed = (packed << 6) | ALPHABET.iter().position(|&a| a == b)? as u128;
    }
    let high = packed >> 62;
    let low = packed & ((1u128 << 62) - 1);
    Some(Uuid::from_u128((high << 64) | (0b10u128 << 62) | low))
}

/// Zones have names, not UUIDs; this derives one per zone so that capacity and pool ids can be aliased like
/// everything else.
pub fn zone_uuid(zone: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("nimbus.zone.{zone}").as_bytes())
}

/// Whether `s` has the shape of an SF id: `<prefix>_[0-9a-zA-Z_-]{1,21}`.
fn well_formed(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 21
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// The Nimbus id behind an SF id of `kind`, also under its legacy prefix. `None` when it names nothing.
pub async fn resolve(engine: &Engine, kind: &str, given: &str) -> SfResult<Option<Uuid>> {
    let wanted = prefix(kind);
    let current = LEGACY
        .iter()
        .find(|(old, new)| *new == wanted && given.starts_with(old))
        .map(|(old, new)| format!("{new}{}", &given[old.len()..]))
        .unwrap_or_else(|| given.to_string());
    if !well_formed(&current, wanted) {
        return Ok(None);
    }
    if let Some(stored) = engine.resolve_alias(kind, &current).await? {
        return Ok(Some(stored));
    }
    Ok(underive(&current[wanted.len()..]))
}

/// The caller's instance named by an SF id (`inst_…`, legacy `vm_…`) or a resource path
/// (`sfc:instance:<account>:<workspace>:<name>`); anything else, and another project's instance, is 404.
pub async fn instance(engine: &Engine, ctx: &Context, given: &str) -> SfResult<Instance> {
    let missing = || SfError::not_found(format!("instance {given} not found"));
    if let Some(path) = given.strip_prefix("sfc:instance:") {
        let parts: Vec<&str> = path.split(':').collect();
        let [account, workspace, name] = parts[..] else { return Err(missing()) };
        let who = engine.whoami(ctx).await?;
        if account != who.organization.name || workspace != who.project.name {
            return Err(missing());
        }
        let page = engine
            .list_instances(ctx, InstanceFilter { name: Some(name.to_string()), limit: Some(1), ..Default::default() })
            .await?;
        return page.items.into_iter().next().ok_or_else(missing);
    }
    let id = resolve(engine, INSTANCE, given).await?.ok_or_else(missing)?;
    match engine.instance(ctx, id).await {
        Err(nimbus_core::DomainError::NotFound { .. }) => Err(missing()),
        other => Ok(other?),
    }
}

/// [`instance`], or the kept record of a deleted one (by id: a resource path names a live instance).
pub async fn instance_or_destroyed(engine: &Engine, ctx: &Context, given: &str) -> SfResult<Instance> {
    match instance(engine, ctx, given).await {
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND && !given.starts_with("sfc:") => {
            let id = resolve(engine, INSTANCE, given).await?.ok_or(e.clone())?;
            engine.instance_or_destroyed(ctx, id).await.map_err(|_| e)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_turn_back_into_their_uuid() {
        for id in [Uuid::new_v4(), Uuid::now_v7(), Uuid::new_v5(&Uuid::NAMESPACE_OID, b"zone")] {
            let sf = derive(INSTANCE, id);
            assert!(well_formed(&sf, "inst_"), "{sf}");
            assert_eq!(sf.len(), 5 + 21);
            assert_eq!(underive(&sf[5..]), Some(id), "{sf}");
        }
        assert_ne!(derive(INSTANCE, Uuid::new_v4()), derive(INSTANCE, Uuid::new_v4()));
    }

    #[test]
    fn generated_ids_have_the_documented_shape() {
        for _ in 0..100 {
            let id = generate(INSTANCE);
            assert_eq!(id.len(), 5 + 21, "{id}");
            assert!(well_formed(&id, "inst_"), "{id}");
        }
        assert!(!well_formed("inst_", "inst_"));
        assert!(!well_formed("inst_a/b", "inst_"));
        assert!(!well_formed("isku_abc", "inst_"));
    }
}

//! Tenancy and credentials: bootstrap of the first admin key, authentication, API keys, projects, quotas.

use base64::Engine as _;
use nimbus_core::operation::Actor;
use nimbus_core::tenancy::{ApiKey, Organization, Project, Quota, Role, Usage};
use nimbus_core::DomainError;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use nimbus_store::{StoreError, Write, WriteSet};

use crate::{store_err, Context, Engine, Result};

/// What a fresh server did about its first credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// Keys already existed: nothing done.
    AlreadyBootstrapped,
    /// Created from `NIMBUS_BOOTSTRAP_KEY` / `NIMBUS_BOOTSTRAP_SECRET`.
    FromEnvironment { key_id: String },
    /// Generated: the secret is shown this once.
    Generated { key_id: String, secret: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct WhoAmI {
    pub key_id: String,
    pub role: Role,
    pub project: Project,
    pub organization: Organization,
    pub zone: nimbus_core::catalog::Zone,
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A password for an instance's default user: 20 characters of an alphabet without look-alikes.
pub(crate) fn new_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

pub(crate) fn new_key_id() -> String {
    let mut buf = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut buf);
    format!("NIM{}", hex::encode(buf))
}

impl Engine {
    /// Creates the default organization, project and first admin key on a store without keys.
    pub async fn bootstrap(&self, key: Option<(String, String)>) -> Result<BootstrapOutcome> {
        if self.store.count_api_keys().await.map_err(store_err)? > 0 {
            return Ok(BootstrapOutcome::AlreadyBootstrapped);
        }
        let org = Organization { id: Uuid::new_v4(), name: "default".into(), created_at: nimbus_core::now() };
        self.store.put_organization(&org).await.map_err(store_err)?;
        let project = self
            .store
            .create_project(&Project {
                id: Uuid::new_v4(),
                numeric_id: 0,
                organization_id: org.id,
                name: "default".into(),
                quota: Quota::default(),
                created_at: nimbus_core::now(),
            })
            .await
            .map_err(store_err)?;
        let (key_id, secret, generated) = match key {
            Some((k, s)) => (k, s, false),
            None => (new_key_id(), random_token(32), true),
        };
        if secret.len() < 16 {
            return Err(DomainError::invalid("NIMBUS_BOOTSTRAP_SECRET", "must be at least 16 characters"));
        }
        let key = ApiKey {
            key_id: key_id.clone(),
            name: "bootstrap".into(),
            project_id: project.id,
            role: Role::Operator,
            secret_sha256: sha256_hex(&secret),
            secret: secret.clone(),
            created_at: nimbus_core::now(),
        };
        match self.store.put_api_key(&key).await {
            Ok(()) => {}
            // Another server starting on the same database bootstrapped first, with the same key: this
            // one's organization and project, still empty, go again.
            Err(StoreError::AlreadyExists(_)) => {
                let mut undo = WriteSet::new();
                undo.push(Write::DeleteProject { id: project.id });
                undo.push(Write::DeleteOrganization { id: org.id });
                self.store.apply(undo).await.map_err(store_err)?;
                return Ok(BootstrapOutcome::AlreadyBootstrapped);
            }
            Err(e) => return Err(store_err(e)),
        }
        Ok(if generated {
            BootstrapOutcome::Generated { key_id, secret }
        } else {
            BootstrapOutcome::FromEnvironment { key_id }
        })
    }

    async fn context_for(&self, key: ApiKey, actor: Actor) -> Result<Context> {
        let project = self
            .store
            .get_project(key.project_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| DomainError::Unauthenticated("the API key's project no longer exists".into()))?;
        let ctx = Context { actor: Actor { key_id: Some(key.key_id.clone()), ..actor }, key, project };
        crate::audit::note_caller(&ctx);
        Ok(ctx)
    }

    /// Authenticates a bearer-style secret (native, SF Compute, ONET, Gcore, SharedCloud).
    pub async fn authenticate_secret(&self, secret: &str, actor: Actor) -> Result<Context> {
        let unauthenticated = || DomainError::Unauthenticated("invalid API key".into());
        let key = self.store.get_api_key_by_secret_hash(&sha256_hex(secret)).await.map_err(store_err)?;
        let key = key.ok_or_else(unauthenticated)?;
        // The hash lookup already matched; the constant-time comparison keeps timing independent of the
        // secret even if the index ever returned a near match.
        if !bool::from(key.secret.as_bytes().ct_eq(secret.as_bytes())) {
            return Err(unauthenticated());
        }
        self.context_for(key, actor).await
    }

    /// Finds a key by its public id, for dialects that verify a signature made with the secret (Exoscale).
    /// The caller verifies the signature with `key.secret` before calling [`Engine::context_for_key`].
    pub async fn api_key_for_signature(&self, key_id: &str) -> Result<ApiKey> {
        self.store
            .get_api_key(key_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| DomainError::Unauthenticated("invalid API key".into()))
    }

    pub async fn context_for_key(&self, key: ApiKey, actor: Actor) -> Result<Context> {
        self.context_for(key, actor).await
    }

    pub async fn whoami(&self, ctx: &Context) -> Result<WhoAmI> {
        let organization = self
            .store
            .get_organization(ctx.project.organization_id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| DomainError::Internal("project without organization".into()))?;
        Ok(WhoAmI {
            key_id: ctx.key.key_id.clone(),
            role: ctx.key.role,
            project: ctx.project.clone(),
            organization,
            zone: self.zone().await?,
        })
    }

    pub async fn create_api_key(
        &self,
        ctx: &Context,
        name: &str,
        role: Role,
        project_id: Option<Uuid>,
    ) -> Result<ApiKey> {
        ctx.require(Role::Admin)?;
        if role > ctx.role() {
            return Err(DomainError::Forbidden(format!(
                "a {} key cannot make a {} key: no key makes one above its own role",
                ctx.role().as_str(),
                role.as_str()
            )));
        }
        let project = match project_id {
            None => ctx.project.clone(),
            Some(id) if id == ctx.project.id => ctx.project.clone(),
            // Another project's keys are its organization's admins' to make.
            Some(id) => {
                ctx.require(Role::OrgAdmin)?;
                self.project_in_org(ctx, id).await?
            }
        };
        let secret = random_token(32);
        let key = ApiKey {
            key_id: new_key_id(),
            name: name.to_string(),
            project_id: project.id,
            role,
            secret_sha256: sha256_hex(&secret),
            secret,
            created_at: nimbus_core::now(),
        };
        self.store.put_api_key(&key).await.map_err(store_err)?;
        Ok(key)
    }

    pub async fn list_api_keys(&self, ctx: &Context) -> Result<Vec<ApiKey>> {
        ctx.require(Role::Admin)?;
        self.store.list_api_keys(ctx.project.id).await.map_err(store_err)
    }

    pub async fn delete_api_key(&self, ctx: &Context, key_id: &str) -> Result<()> {
        ctx.require(Role::Admin)?;
        let key = self.store.get_api_key(key_id).await.map_err(store_err)?;
        let key =
            key.filter(|k| k.project_id == ctx.project.id).ok_or_else(|| DomainError::not_found("api key", key_id))?;
        if key.key_id == ctx.key.key_id {
            return Err(DomainError::Conflict("an API key cannot delete itself; use another admin key".into()));
        }
        self.store.delete_api_key(key_id).await.map_err(store_err)?;
        Ok(())
    }

    /// A project of the caller's organization; projects of other organizations do not exist for it.
    async fn project_in_org(&self, ctx: &Context, id: Uuid) -> Result<Project> {
        self.store
            .get_project(id)
            .await
            .map_err(store_err)?
            .filter(|p| p.organization_id == ctx.project.organization_id)
            .ok_or_else(|| DomainError::not_found("project", id))
    }

    pub async fn create_project(&self, ctx: &Context, name: &str) -> Result<Project> {
        ctx.require(Role::OrgAdmin)?;
        nimbus_core::instance::validate_name("name", name)?;
        self.store
            .create_project(&Project {
                id: Uuid::new_v4(),
                numeric_id: 0,
                organization_id: ctx.project.organization_id,
                name: name.to_string(),
                quota: Quota::default(),
                created_at: nimbus_core::now(),
            })
            .await
            .map_err(store_err)
    }

    pub async fn list_projects(&self, ctx: &Context) -> Result<Vec<Project>> {
        self.store.list_projects(ctx.project.organization_id).await.map_err(store_err)
    }

    pub async fn get_project(&self, ctx: &Context, id: Uuid) -> Result<Project> {
        self.project_in_org(ctx, id).await
    }

    pub async fn project_usage(&self, ctx: &Context, id: Uuid) -> Result<Usage> {
        let project = self.project_in_org(ctx, id).await?;
        self.store.usage(project.id).await.map_err(store_err)
    }

    /// Quotas are what a tenant may take of the cloud: the operator's to set, never a tenant's own.
    pub async fn set_quota(&self, ctx: &Context, id: Uuid, quota: Quota) -> Result<Project> {
        ctx.require(Role::Operator)?;
        // Above every organization: any project.
        let project = self
            .store
            .get_project(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| DomainError::not_found("project", id))?;
        self.store.set_quota(project.id, quota).await.map_err(store_err)?;
        Ok(Project { quota, ..project })
    }
}

/// Revocation for what outlives one request (event streams, console websockets): they end when their key goes.
impl Engine {
    /// Whether the caller's API key still stands: not deleted since the request was authenticated. A
    /// store that cannot answer keeps the stream (it fails on its own if the store stays down).
    pub async fn key_stands(&self, ctx: &Context) -> bool {
        !matches!(self.store.get_api_key(&ctx.key.key_id).await, Ok(None))
    }

    /// Resolves once the caller's API key is deleted, through any server: every change to the store is a
    /// moment to look, and a deletion is one.
    pub async fn key_revoked(&self, ctx: &Context) {
        let mut changes = self.changes();
        loop {
            changes.borrow_and_update();
            if !self.key_stands(ctx).await {
                return;
            }
            Engine::wait_for_change(&mut changes, std::time::Duration::from_secs(30)).await;
        }
    }
}

/// `Idempotency-Key`s: each belongs to the API key that sent it, and is held by one request at a time under
/// a lease, recording what it applied in the request's own transactions (see [`nimbus_store::IdempotencyHold`]).
impl Engine {
    /// Claims `key` for the caller's request whose method, path and body hash to `request_hash`.
    pub async fn idempotency_claim(
        &self,
        ctx: &Context,
        key: &str,
        request_hash: &str,
    ) -> Result<nimbus_store::IdempotencyClaim> {
        if key.is_empty() || key.len() > 255 {
            return Err(DomainError::invalid("Idempotency-Key", "must be 1 to 255 characters"));
        }
        let scope = nimbus_store::IdempotencyScope {
            project_id: ctx.project.id,
            api_key_id: ctx.key.key_id.clone(),
            key: key.to_string(),
        };
        self.store.idempotency_claim(&scope, request_hash, &self.worker_id, self.config.lease).await.map_err(store_err)
    }

    /// Runs `f` (the request) under `hold`: whatever it commits records that the key's request applied.
    pub async fn holding<F: std::future::Future>(&self, hold: nimbus_store::IdempotencyHold, f: F) -> F::Output {
        nimbus_store::holding(hold, f).await
    }

    /// How often a running request renews its hold.
    pub fn idempotency_renew_every(&self) -> std::time::Duration {
        self.config.lease / 3
    }

    pub async fn idempotency_renew(&self, hold: &nimbus_store::IdempotencyHold) -> Result<bool> {
        self.store.idempotency_renew(hold, self.config.lease).await.map_err(store_err)
    }

    pub async fn idempotency_finish(
        &self,
        hold: &nimbus_store::IdempotencyHold,
        status: u16,
        body: &str,
    ) -> Result<()> {
        self.store.idempotency_finish(hold, status, body).await.map_err(store_err)
    }

    pub async fn idempotency_release(&self, hold: &nimbus_store::IdempotencyHold) -> Result<()> {
        self.store.idempotency_release(hold).await.map_err(store_err)
    }

    /// An API key of the caller's project, with its secret (for answering the request that created it).
    pub async fn api_key(&self, ctx: &Context, key_id: &str) -> Result<ApiKey> {
        ctx.require(Role::Admin)?;
        let key = self.store.get_api_key(key_id).await.map_err(store_err)?;
        match key {
            // A key of another project of the caller's organization (an admin may create those).
            Some(k) if k.project_id == ctx.project.id || self.project_in_org(ctx, k.project_id).await.is_ok() => Ok(k),
            _ => Err(DomainError::not_found("api key", key_id)),
        }
    }
}

//! Accounts: people who register with a username and password and log in to get an API key.
//!
//! An account owns an organization and a project of its own, made when it registers, so its instances are
//! nobody else's. Logging in hands out the account's login key, an ordinary admin API key of that project:
//! after the login every call is an API-key call like any other. Passwords are kept only as salted
//! Argon2id hashes. Usernames are unique, held by an alias of kind [`USERNAME`] in the same transaction as
//! the account's record; renaming moves it in one transaction, deleting the account frees it. Every later
//! write of the account expects the alias to still name it, so a login or a change that races the
//! account's deletion (or renaming) fails instead of bringing a deleted account back.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use nimbus_core::tenancy::{Account, ApiKey, Organization, Project, Quota, Role};
use nimbus_core::DomainError;
use nimbus_store::{InstanceQuery, Record, StoreError, Write, WriteSet};
use uuid::Uuid;

use crate::auth::{new_key_id, random_token, sha256_hex};
use crate::instances::ActionRequest;
use crate::{store_err, Context, Engine, Result};

pub(crate) const ACCOUNT: &str = "account";
/// Alias kind that keeps usernames unique.
pub const USERNAME: &str = "account.username";
/// The name of the API key that logging in hands out.
pub const LOGIN_KEY_NAME: &str = "login";

pub const MAX_USERNAME: usize = 150;
pub const MIN_PASSWORD: usize = 8;
/// How long deleting an account waits for its instances to be gone.
const DELETE_WAIT: Duration = Duration::from_secs(60);
/// How many times deleting an account deletes instances again (made meanwhile with the account's key)
/// before it gives up.
const DELETE_ROUNDS: usize = 3;

/// Passwords refused outright (the head of the lists every password checker ships).
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "password1",
    "iloveyou",
    "11111111",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "abc12345",
    "passw0rd",
    "qwerty123",
    "trustno1",
    "superman",
    "00000000",
    "letmein1",
    "admin123",
    "changeme",
    "1q2w3e4r",
    "zaq12wsx",
];

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// A change of an account's own details; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    pub username: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
}

fn username_taken() -> DomainError {
    DomainError::invalid("username", "A user with that username already exists.")
}

/// What a write that expected the account's username alias meets when the account went away meanwhile.
fn account_gone(id: Uuid) -> DomainError {
    DomainError::Conflict(format!("account {id} was changed or deleted meanwhile; retry"))
}

fn validate_username(username: &str) -> Result<()> {
    if username.is_empty() || username.chars().count() > MAX_USERNAME {
        return Err(DomainError::invalid(
            "username",
            format!("Ensure this field has no more than {MAX_USERNAME} characters and is not blank."),
        ));
    }
    if !username.chars().all(|c| c.is_alphanumeric() || "@.+-_".contains(c)) {
        return Err(DomainError::invalid(
            "username",
            "Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.",
        ));
    }
    Ok(())
}

fn validate_email(email: &str) -> Result<()> {
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|l| !l.is_empty())
        });
    if valid {
        Ok(())
    } else {
        Err(DomainError::invalid("email", "Enter a valid email address."))
    }
}

fn validate_password(password: &str, username: &str) -> Result<()> {
    let refuse = |m: &str| Err(DomainError::invalid("password", m));
    if password.chars().count() < MIN_PASSWORD {
        return refuse(&format!("This password is too short. It must contain at least {MIN_PASSWORD} characters."));
    }
    if COMMON_PASSWORDS.contains(&password.to_lowercase().as_str()) {
        return refuse("This password is too common.");
    }
    if password.chars().all(|c| c.is_ascii_digit()) {
        return refuse("This password is entirely numeric.");
    }
    if password.eq_ignore_ascii_case(username) {
        return refuse("The password is too similar to the username.");
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DomainError::Internal(format!("hashing a password: {e}")))
}

fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash no password matches, verified against for unknown usernames so that a login takes as long whether
/// the username exists or not.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token(32)).expect("hashing works"))
}

impl Engine {
    /// Argon2 takes tens of milliseconds of CPU on purpose: off the async workers, and one per core at most
    /// (the others wait their turn).
    async fn hashing<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _turn = self.throttle.hashing.acquire().await.map_err(|e| DomainError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| DomainError::Internal(format!("password hashing: {e}")))
    }
}

impl Engine {
    /// Registers an account with an organization and a project of its own.
    pub async fn register_account(&self, source: Option<&str>, new: NewAccount) -> Result<Account> {
        if !self.config.allow_registration {
            return Err(DomainError::Forbidden(
                "registration is closed on this cloud: ask its operator for an account (or to run the server with \
                 --allow-registration)"
                    .into(),
            ));
        }
        self.throttle.attempt(source, &new.username)?;
        validate_username(&new.username)?;
        validate_email(&new.email)?;
        validate_password(&new.password, &new.username)?;
        if self.store.resolve_alias(USERNAME, &new.username).await.map_err(store_err)?.is_some() {
            return Err(username_taken());
        }
        let password = new.password.clone();
        let password_hash = self.hashing(move || hash_password(&password)).await??;
        let now = nimbus_core::now();
        let organization = Organization { id: Uuid::new_v4(), name: new.username.clone(), created_at: now };
        self.store.put_organization(&organization).await.map_err(store_err)?;
        let project = self
            .store
            .create_project(&Project {
                id: Uuid::new_v4(),
                numeric_id: 0,
                organization_id: organization.id,
                name: "default".into(),
                quota: Quota::default(),
                created_at: now,
            })
            .await
            .map_err(store_err)?;
        let account = Account {
            id: Uuid::new_v4(),
            username: new.username.clone(),
            email: new.email.clone(),
            password_hash,
            organization_id: organization.id,
            project_id: project.id,
            created_at: now,
            last_login_at: None,
        };
        let mut set = WriteSet::new();
        set.push(Write::InsertRecord(account_record(&account)));
        set.push(Write::PutAlias { kind: USERNAME.into(), alias: account.username.clone(), id: account.id });
        match self.store.apply(set).await {
            Ok(()) => Ok(account),
            // Another registration took the username between the check and now: this one's project and
            // organization, still empty, go again.
            Err(StoreError::AlreadyExists(_)) => {
                let mut undo = WriteSet::new();
                undo.push(Write::DeleteProject { id: project.id });
                undo.push(Write::DeleteOrganization { id: organization.id });
                if let Err(e) = self.store.apply(undo).await {
                    tracing::warn!(project = %project.id, error = %e, "could not remove a refused registration's project");
                }
                Err(username_taken())
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Checks a username and password and hands out the account's login key (made at the first login, the
    /// same one afterwards, as token logins do). The key and the login time are written only while the
    /// username still names the account with the password that matched: a login that loses a race with the
    /// account's deletion, renaming or password change is refused.
    pub async fn log_in(&self, source: Option<&str>, username: &str, password: &str) -> Result<(Account, ApiKey)> {
        let refused = || DomainError::Unauthenticated("Unable to log in with provided credentials.".into());
        self.throttle.attempt(source, username)?;
        let account = match self.store.resolve_alias(USERNAME, username).await.map_err(store_err)? {
            Some(id) => self.account_by_id(id).await?.map(|(a, _)| a),
            None => None,
        };
        let hash = account.as_ref().map_or_else(|| decoy_hash().to_string(), |a| a.password_hash.clone());
        let (given, verified) = (password.to_string(), hash.clone());
        let matches = self.hashing(move || password_matches(&given, &verified)).await?;
        let id = match account {
            Some(a) if matches => a.id,
            _ => return Err(refused()),
        };
        // Two first logins at once may both make a key: the second write finds the first one's.
        for _ in 0..2 {
            let (mut account, record) = match self.account_by_id(id).await? {
                Some((a, r)) if a.password_hash == hash && a.username == username => (a, r),
                _ => return Err(refused()),
            };
            let mut set = WriteSet::new();
            set.push(Write::ExpectAlias { kind: USERNAME.into(), alias: account.username.clone(), id });
            let keys = self.store.list_api_keys(account.project_id).await.map_err(store_err)?;
            let key = match keys.into_iter().find(|k| k.name == LOGIN_KEY_NAME) {
                Some(key) => key,
                None => {
                    let secret = random_token(32);
                    let key = ApiKey {
                        key_id: new_key_id(),
                        name: LOGIN_KEY_NAME.into(),
                        project_id: account.project_id,
                        role: Role::Admin,
                        secret_sha256: sha256_hex(&secret),
                        secret,
                        created_at: nimbus_core::now(),
                    };
                    set.push(Write::PutApiKey(key.clone()));
                    key
                }
            };
            account.last_login_at = Some(nimbus_core::now());
            // Only the version whose password matched: a password change meanwhile refuses this login.
            set.push(Write::UpdateRecord {
                record: record.next(&account.username, &account),
                expected_generation: record.generation,
            });
            match self.store.apply(set).await {
                Ok(()) => return Ok((account, key)),
                Err(StoreError::Conflict(_)) => return Err(refused()),
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(refused())
    }

    async fn account_by_id(&self, id: Uuid) -> Result<Option<(Account, Record)>> {
        self.record_of(ACCOUNT, id).await
    }

    /// The account whose project the caller's key belongs to; keys of other projects have none.
    pub async fn account(&self, ctx: &Context) -> Result<Account> {
        Ok(self.account_record_of(ctx).await?.0)
    }

    async fn account_record_of(&self, ctx: &Context) -> Result<(Account, Record)> {
        let records = self.store.list_records(ACCOUNT, Some(ctx.project.id)).await.map_err(store_err)?;
        let record = records.into_iter().find(|r| r.project_id == Some(ctx.project.id));
        let record =
            record.ok_or_else(|| DomainError::not_found("account", format!("of project {}", ctx.project.id)))?;
        Ok((record.decode().map_err(store_err)?, record))
    }

    /// Changes the caller's account, checked as registration checks it; a new username moves the account's
    /// alias in the same transaction, and is refused when another account holds it.
    pub async fn update_account(&self, ctx: &Context, patch: AccountPatch) -> Result<Account> {
        ctx.require(Role::Admin)?;
        let (first, _) = self.account_record_of(ctx).await?;
        if let Some(username) = &patch.username {
            validate_username(username)?;
        }
        if let Some(email) = &patch.email {
            validate_email(email)?;
        }
        // Hashed once, before the compare-and-swap loop: Argon2 is slow on purpose.
        let password_hash = match &patch.password {
            Some(password) => {
                validate_password(password, patch.username.as_deref().unwrap_or(&first.username))?;
                let password = password.clone();
                Some(self.hashing(move || hash_password(&password)).await??)
            }
            None => None,
        };
        for attempt in 0..crate::instances::CAS_RETRIES {
            if attempt > 0 {
                crate::instances::backoff(attempt).await;
            }
            let (current, record) = self.account_record_of(ctx).await.map_err(|_| account_gone(first.id))?;
            let mut next = current.clone();
            if let Some(username) = &patch.username {
                next.username = username.clone();
            }
            if let Some(email) = &patch.email {
                next.email = email.clone();
            }
            if let Some(hash) = &password_hash {
                next.password_hash = hash.clone();
            }
            let mut set = WriteSet::new();
            set.push(Write::ExpectAlias { kind: USERNAME.into(), alias: current.username.clone(), id: current.id });
            if next.username != current.username {
                set.push(Write::DeleteAlias { kind: USERNAME.into(), alias: current.username.clone() });
                set.push(Write::PutAlias { kind: USERNAME.into(), alias: next.username.clone(), id: current.id });
            }
            set.push(Write::UpdateRecord {
                record: record.next(&next.username, &next),
                expected_generation: record.generation,
            });
            match self.store.apply(set).await {
                Ok(()) => return Ok(next),
                Err(StoreError::AlreadyExists(_)) => return Err(username_taken()),
                // A login or another change came first (or the account is going): read it again.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(account_gone(first.id))
    }

    /// Deletes the caller's account and everything it had: its instances (each after the operation it is
    /// busy with), then, once they are gone, in one transaction the account, its username, its project with
    /// its API keys and records, and its organization when nothing else is left in it. An instance made
    /// meanwhile with the account's key keeps the project alive, so it is deleted too and the deletion is
    /// tried again; instances that take longer than [`DELETE_WAIT`] to go leave the account in place
    /// (`Conflict`), to be deleted again later.
    pub async fn delete_account(&self, ctx: &Context) -> Result<()> {
        ctx.require(Role::Admin)?;
        let deadline = tokio::time::Instant::now() + DELETE_WAIT;
        for _ in 0..DELETE_ROUNDS {
            let account = self.account(ctx).await?;
            let instances = self
                .store
                .list_instances(&InstanceQuery {
                    project_id: Some(account.project_id),
                    limit: u32::MAX,
                    ..Default::default()
                })
                .await
                .map_err(store_err)?;
            let mut deleting = Vec::new();
            for instance in instances {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.act_when_free(ctx, instance.id, ActionRequest::Delete, left).await {
                    Ok(op) => deleting.push(op.id),
                    // Already gone, or on its way out under another operation.
                    Err(DomainError::NotFound { .. }) | Err(DomainError::InvalidState { .. }) => {}
                    Err(DomainError::Busy { operation, .. }) => {
                        deleting.extend(Uuid::parse_str(&operation).ok());
                    }
                    Err(e) => return Err(e),
                }
            }
            for op in deleting {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.wait_operation(ctx, op, left).await?;
            }
            let mut set = WriteSet::new();
            set.push(Write::ExpectAlias { kind: USERNAME.into(), alias: account.username.clone(), id: account.id });
            set.push(Write::DeleteRecord { kind: ACCOUNT.into(), id: account.id, expected_generation: None });
            set.push(Write::DeleteAlias { kind: USERNAME.into(), alias: account.username.clone() });
            set.push(Write::DeleteProject { id: account.project_id });
            let projects = self.store.list_projects(account.organization_id).await.map_err(store_err)?;
            if projects.iter().all(|p| p.id == account.project_id) {
                set.push(Write::DeleteOrganization { id: account.organization_id });
            }
            match self.store.apply(set).await {
                Ok(()) => return Ok(()),
                // An instance is still there (or the account was renamed meanwhile): another round.
                Err(StoreError::Conflict(_)) if tokio::time::Instant::now() < deadline => continue,
                Err(StoreError::Conflict(_)) => break,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(DomainError::Conflict(
            "the account's instances are still being deleted; delete the account again in a moment".into(),
        ))
    }
}

fn account_record(account: &Account) -> Record {
    Record::new(ACCOUNT, account.id, Some(account.project_id), &account.username, account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_salted_hashes_that_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(password_matches("correct horse", &a));
        assert!(!password_matches("wrong horse", &a));
        assert!(!password_matches("anything", decoy_hash()));
    }

    #[test]
    fn weak_passwords_and_bad_names_are_refused() {
        assert!(validate_password("short", "u").is_err());
        assert!(validate_password("password", "u").is_err());
        assert!(validate_password("1234567890123", "u").is_err());
        assert!(validate_password("alice-in-chains", "alice-in-chains").is_err());
        assert!(validate_password("1234blablabla", "1234").is_ok());
        assert!(validate_username("john.doe+1@x").is_ok());
        assert!(validate_username("john doe").is_err());
        assert!(validate_username("").is_err());
        assert!(validate_email("a@example.com").is_ok());
        assert!(validate_email("a@example").is_err());
        assert!(validate_email("example.com").is_err());
    }
}

//! Where the store seals and opens secrets (`crate::seal`): API keys' secrets, the documents of
//! [`SEALED_RECORD_KINDS`] and idempotent requests' stored answers. Everything else stays readable SQL.

use super::*;
use crate::seal::open_with;

impl SqlStore {
    /// `value` as stored at `place`: sealed when this store has keys.
    pub(super) fn sealed(&self, place: &str, value: &str) -> String {
        match &self.seal {
            Some(keys) => keys.seal(place, value),
            None => value.to_string(),
        }
    }

    pub(super) fn sealed_key(&self, key: &ApiKey) -> ApiKey {
        ApiKey { secret: self.sealed(&api_key_place(&key.key_id), &key.secret), ..key.clone() }
    }

    pub(super) fn opened_key(&self, mut key: ApiKey) -> StoreResult<ApiKey> {
        key.secret = open_with(self.seal.as_deref(), &api_key_place(&key.key_id), &key.secret)?;
        Ok(key)
    }

    fn sealed_record(&self, record: &Record) -> Record {
        let place = record_place(&record.kind, record.id);
        let body = serde_json::Value::String(self.sealed(&place, &record.body.to_string()));
        Record { body, ..record.clone() }
    }

    /// `set` as it is written: its secrets sealed. Borrowed as it is when it holds none.
    pub(super) fn sealed_set<'s>(&self, set: &'s WriteSet) -> std::borrow::Cow<'s, WriteSet> {
        let secret = |w: &Write| match w {
            Write::PutApiKey(_) => true,
            Write::InsertRecord(r) | Write::UpdateRecord { record: r, .. } => SEALED_RECORD_KINDS.contains(&&*r.kind),
            _ => false,
        };
        if self.seal.is_none() || !set.writes.iter().any(secret) {
            return std::borrow::Cow::Borrowed(set);
        }
        let mut sealed = set.clone();
        for write in &mut sealed.writes {
            match write {
                Write::PutApiKey(key) => *key = self.sealed_key(key),
                Write::InsertRecord(r) | Write::UpdateRecord { record: r, .. }
                    if SEALED_RECORD_KINDS.contains(&&*r.kind) =>
                {
                    *r = self.sealed_record(r)
                }
                _ => {}
            }
        }
        std::borrow::Cow::Owned(sealed)
    }

    /// Seals with the current key every secret that is in clear (written before sealing, or by a store
    /// without keys) or sealed by another key of the ring; returns how many. Each row is replaced only if
    /// it still holds what was read (a compare-and-swap on its text), so servers resealing at once, or a
    /// concurrent writer, lose nothing. Does nothing without keys.
    pub async fn reseal(&self) -> StoreResult<u64> {
        let Some(keys) = self.seal.as_deref() else { return Ok(0) };
        let stale = |value: &str| !keys.is_current(value);
        let mut resealed = 0;

        let rows = query("SELECT key_id, body FROM api_keys", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading API keys to reseal"))?;
        for row in rows {
            let (key_id, old): (String, String) = (column(&row, "key_id")?, column(&row, "body")?);
            let key: ApiKey = decode("API key", &old)?;
            if stale(&key.secret) {
                let new = encode(&self.sealed_key(&self.opened_key(key)?));
                resealed += self
                    .write_one(
                        "resealing an API key",
                        "UPDATE api_keys SET body = $1 WHERE key_id = $2 AND body = $3",
                        args![new, &key_id, &old],
                    )
                    .await?;
            }
        }

        for kind in SEALED_RECORD_KINDS {
            let rows =
                query("SELECT id, project_id, name, body, generation FROM records WHERE kind = $1", args![*kind])
                    .fetch_all(&self.pool)
                    .await
                    .map_err(self.fail("reading records to reseal"))?;
            for row in rows {
                let old: String = column(&row, "body")?;
                let current = matches!(decode(kind, &old)?, serde_json::Value::String(s) if keys.is_current(&s));
                if !current {
                    let record = record_from_row(Some(keys), kind, &row)?;
                    let new = self.sealed_record(&record).body.to_string();
                    resealed += self
                        .write_one(
                            "resealing a record",
                            "UPDATE records SET body = $1 WHERE kind = $2 AND id = $3 AND body = $4",
                            args![new, *kind, record.id, &old],
                        )
                        .await?;
                }
            }
        }

        let rows = query("SELECT project_id, api_key_id, key, body FROM idempotency WHERE body IS NOT NULL", vec![])
            .fetch_all(&self.pool)
            .await
            .map_err(self.fail("reading idempotency keys to reseal"))?;
        for row in rows {
            let scope = IdempotencyScope {
                project_id: parse_uuid(&column::<String>(&row, "project_id")?)?,
                api_key_id: column(&row, "api_key_id")?,
                key: column(&row, "key")?,
            };
            let old: String = column(&row, "body")?;
            if stale(&old) {
                let place = idempotency_place(&scope);
                let new = self.sealed(&place, &keys.open(&place, &old)?);
                resealed += self
                    .write_one(
                        "resealing an idempotency key's answer",
                        "UPDATE idempotency SET body = $1
                         WHERE project_id = $2 AND api_key_id = $3 AND key = $4 AND body = $5",
                        args![new, scope.project_id, &scope.api_key_id, &scope.key, &old],
                    )
                    .await?;
            }
        }
        Ok(resealed)
    }
}

#[cfg(test)]
mod tests {
    use nimbus_core::tenancy::Role;

    use super::*;

    async fn raw(store: &SqlStore, sql: &str) -> String {
        query(sql, vec![]).fetch_one(&store.pool).await.map(|r| column::<String>(&r, "body").unwrap()).unwrap()
    }

    /// A database written before sealing (or under an older key) is sealed with the current key by
    /// `reseal`, and reads the same.
    #[tokio::test]
    async fn reseal_seals_what_was_clear_and_rotates_what_an_older_key_sealed() {
        let store = SqlStore::open_in_memory().await.unwrap();
        let key = ApiKey {
            key_id: "NIMtest".into(),
            name: "k".into(),
            project_id: Uuid::new_v4(),
            role: Role::Member,
            secret: "the-secret-half".into(),
            secret_sha256: "00".into(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        store.put_api_key(&key).await.unwrap();
        let id = Uuid::new_v4();
        let password = Record::new("password", id, None, "password", &serde_json::json!({"password": "pw-in-clear"}));
        store.apply(WriteSet { writes: vec![Write::InsertRecord(password)], ..Default::default() }).await.unwrap();
        assert!(raw(&store, "SELECT body FROM api_keys").await.contains("the-secret-half"), "written before sealing");

        let (a, b) = (SealKeys::new_key_line("a"), SealKeys::new_key_line("b"));
        let store = store.with_seal_keys(SealKeys::parse(&a).unwrap());
        assert_eq!(store.reseal().await.unwrap(), 2);
        assert_eq!(store.reseal().await.unwrap(), 0, "nothing left to seal");
        let (key_row, password_row) =
            (raw(&store, "SELECT body FROM api_keys").await, raw(&store, "SELECT body FROM records").await);
        assert!(!key_row.contains("the-secret-half") && key_row.contains("sealed:v1:a:"), "{key_row}");
        assert!(!password_row.contains("pw-in-clear") && password_row.contains("sealed:v1:a:"), "{password_row}");
        assert_eq!(store.get_api_key("NIMtest").await.unwrap().unwrap().secret, "the-secret-half");
        assert_eq!(store.get_record("password", id).await.unwrap().unwrap().body["password"], "pw-in-clear");

        let store = store.with_seal_keys(SealKeys::parse(&format!("{b}\n{a}")).unwrap());
        assert_eq!(store.reseal().await.unwrap(), 2, "rotated to the new first key");
        assert!(raw(&store, "SELECT body FROM api_keys").await.contains("sealed:v1:b:"));
        let store = store.with_seal_keys(SealKeys::parse(&b).unwrap());
        assert_eq!(store.list_api_keys(key.project_id).await.unwrap()[0].secret, "the-secret-half", "a dropped");
        let store = store.with_seal_keys(SealKeys::parse(&a).unwrap());
        assert!(store.get_api_key("NIMtest").await.is_err(), "the retired key alone opens nothing");
    }
}

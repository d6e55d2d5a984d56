//! What the SQLite and PostgreSQL backends share: the embedded migrations
//! source, every SQL statement (written once, `$n` placeholders work on
//! both) and the trait implementations, generated for each pool type by
//! `sql_stores!`.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationSource, MigrationType};

use super::{BoxFuture, StoreError, StoreResult};

/// Migrations compiled into the binary: `(version, description, sql)`.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedMigrations(pub &'static [(i64, &'static str, &'static str)]);

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Maps a driver error: unique violations become [`StoreError::Conflict`].
pub(crate) fn db_err(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Any driver error as [`StoreError::Unavailable`].
pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn hash32(field: &str, v: Vec<u8>) -> StoreResult<[u8; 32]> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{field} is not 32 bytes")))
}

pub(crate) fn list_to_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn list_from_json(field: &str, s: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(format!("{field} is not a JSON list")))
}

pub(crate) fn u32_of(field: &str, v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{field} out of range")))
}

/// A row struct whose fields are read by column name (`row.try_get("name")`),
/// never by position: a column list out of order cannot fill the wrong
/// field. Generic over the database, so SQLite and PostgreSQL share it.
macro_rules! named_row {
    ($(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name {
            $(pub(crate) $field: $ty,)*
        }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'r str: sqlx::ColumnIndex<R>,
            $($ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    };
}

/// Column list of `users`.
pub const USER_COLS: &str =
    "id, username, password_hash, roles, permissions, tenant, disabled, created_at, updated_at";
named_row!(
    /// A `users` row.
    UserRow {
        id: String,
        username: String,
        password_hash: String,
        roles: String,
        permissions: String,
        tenant: Option<String>,
        disabled: bool,
        created_at: i64,
        updated_at: i64,
    }
);

/// Column list of `sessions`.
pub const SESSION_COLS: &str = "id, user_id, created_at, last_seen_at, expires_at, user_agent, client_ip, remember_me, revoked_at";
named_row!(
    /// A `sessions` row.
    SessionRow {
        id: String,
        user_id: String,
        created_at: i64,
        last_seen_at: i64,
        expires_at: i64,
        user_agent: Option<String>,
        client_ip: Option<String>,
        remember_me: bool,
        revoked_at: Option<i64>,
    }
);

/// Column list of `refresh_tokens`.
pub const REFRESH_COLS: &str = "hash, family, generation, session_id, user_id, expires_at, remember_me, created_at, rotated_at, successor, revoked_at";
named_row!(
    /// A `refresh_tokens` row.
    RefreshRow {
        hash: Vec<u8>,
        family: String,
        generation: i64,
        session_id: String,
        user_id: String,
        expires_at: i64,
        remember_me: bool,
        created_at: i64,
        rotated_at: Option<i64>,
        successor: Option<Vec<u8>>,
        revoked_at: Option<i64>,
    }
);

/// Column list of `api_keys`.
pub const API_KEY_COLS: &str = "id, hash, name, owner, roles, permissions, scopes, expires_at, created_at, revoked_at, last_used_at";
named_row!(
    /// An `api_keys` row.
    ApiKeyRow {
        id: String,
        hash: Vec<u8>,
        name: String,
        owner: String,
        roles: String,
        permissions: String,
        scopes: String,
        expires_at: Option<i64>,
        created_at: i64,
        revoked_at: Option<i64>,
        last_used_at: Option<i64>,
    }
);

/// Column list of `apps`.
pub const APP_COLS: &str = "app_id, name, secret_hash, secret_version, previous_hash, previous_valid_until, services, permissions, tenant, disabled, created_at, updated_at";
named_row!(
    /// An `apps` row.
    AppRow {
        app_id: String,
        name: String,
        secret_hash: Vec<u8>,
        secret_version: i64,
        previous_hash: Option<Vec<u8>>,
        previous_valid_until: Option<i64>,
        services: String,
        permissions: String,
        tenant: Option<String>,
        disabled: bool,
        created_at: i64,
        updated_at: i64,
    }
);

pub(crate) fn user_of(r: UserRow) -> StoreResult<super::User> {
    Ok(super::User {
        roles: list_from_json("roles", &r.roles)?,
        permissions: list_from_json("permissions", &r.permissions)?,
        id: r.id,
        username: r.username,
        password_hash: r.password_hash,
        tenant: r.tenant,
        disabled: r.disabled,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

pub(crate) fn session_of(r: SessionRow) -> super::Session {
    super::Session {
        id: r.id,
        user_id: r.user_id,
        created_at: r.created_at,
        last_seen_at: r.last_seen_at,
        expires_at: r.expires_at,
        user_agent: r.user_agent,
        client_ip: r.client_ip,
        remember_me: r.remember_me,
        revoked_at: r.revoked_at,
    }
}

pub(crate) fn refresh_of(r: RefreshRow) -> StoreResult<super::RefreshRecord> {
    Ok(super::RefreshRecord {
        hash: hash32("hash", r.hash)?,
        family: r.family,
        generation: u32_of("generation", r.generation)?,
        session_id: r.session_id,
        user_id: r.user_id,
        expires_at: r.expires_at,
        remember_me: r.remember_me,
        created_at: r.created_at,
        rotated_at: r.rotated_at,
        successor: r.successor.map(|s| hash32("successor", s)).transpose()?,
        revoked_at: r.revoked_at,
    })
}

pub(crate) fn api_key_of(r: ApiKeyRow) -> StoreResult<super::ApiKeyRecord> {
    Ok(super::ApiKeyRecord {
        hash: hash32("hash", r.hash)?,
        roles: list_from_json("roles", &r.roles)?,
        permissions: list_from_json("permissions", &r.permissions)?,
        scopes: list_from_json("scopes", &r.scopes)?,
        id: r.id,
        name: r.name,
        owner: r.owner,
        expires_at: r.expires_at,
        created_at: r.created_at,
        revoked_at: r.revoked_at,
        last_used_at: r.last_used_at,
    })
}

pub(crate) fn app_of(r: AppRow) -> StoreResult<super::AppRecord> {
    Ok(super::AppRecord {
        secret_hash: hash32("secret_hash", r.secret_hash)?,
        secret_version: u32_of("secret_version", r.secret_version)?,
        previous_hash: r
            .previous_hash
            .map(|h| hash32("previous_hash", h))
            .transpose()?,
        services: list_from_json("services", &r.services)?,
        permissions: list_from_json("permissions", &r.permissions)?,
        app_id: r.app_id,
        name: r.name,
        previous_valid_until: r.previous_valid_until,
        tenant: r.tenant,
        disabled: r.disabled,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// Implements every store trait for `$ty` (a struct with a `pool: sqlx::Pool<$db>` field).
macro_rules! sql_stores {
    ($ty:ty, $db:ty) => {
        async fn insert_refresh_row<'e, E>(ex: E, r: &RefreshRecord) -> StoreResult<()>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, family, generation, session_id, user_id, expires_at, remember_me, created_at, rotated_at, successor, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&r.hash[..])
            .bind(&r.family)
            .bind(i64::from(r.generation))
            .bind(&r.session_id)
            .bind(&r.user_id)
            .bind(r.expires_at)
            .bind(r.remember_me)
            .bind(r.created_at)
            .bind(r.rotated_at)
            .bind(r.successor.as_ref().map(|h| h.to_vec()))
            .bind(r.revoked_at)
            .execute(ex)
            .await
            .map_err(db_err("refresh token"))?;
            Ok(())
        }

        /// Runs a revoking `UPDATE` (`$1` now, `$2` key) until it finds
        /// nothing left: on PostgreSQL a rotation committing while the first
        /// pass waits on its row inserts a successor that pass cannot see,
        /// and the next pass revokes it (a revoked token never rotates, so
        /// this ends).
        async fn revoke_until_done(
            pool: &sqlx::Pool<$db>,
            sql: &'static str,
            key: &str,
            now: i64,
        ) -> StoreResult<u64> {
            let mut total = 0;
            for _ in 0..16 {
                let n = sqlx::query(sql)
                    .bind(now)
                    .bind(key)
                    .execute(pool)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
                if n == 0 {
                    break;
                }
                total += n;
            }
            Ok(total)
        }

        use $crate::stores::sql::{
            API_KEY_COLS, APP_COLS, ApiKeyRow, AppRow, REFRESH_COLS, RefreshRow, SESSION_COLS,
            SessionRow, USER_COLS, UserRow, api_key_of, app_of, db_err, list_to_json, refresh_of,
            session_of, unavailable, user_of,
        };
        use $crate::stores::{
            ApiKeyRecord, ApiKeyStore, AppRecord, AppStore, BoxFuture, Denylist, RefreshRecord,
            RefreshStore, Session, SessionStore, SigningKeyRecord, SigningKeyStore, StoreResult,
            User, UserStore, Username,
        };
        use $crate::stores::revocation_set::session_entry_expiry;
        use $crate::stores::{LoggedRevocation, RevocationLog, RevocationPage, RevokedKind};

        impl SigningKeyStore for $ty {
            fn insert_signing_key<'a>(
                &'a self,
                k: &'a SigningKeyRecord,
            ) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO signing_keys (kid, alg, sealed, created_at, activates_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&k.kid)
                    .bind(&k.alg)
                    .bind(&k.sealed)
                    .bind(k.created_at)
                    .bind(k.activates_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("signing key"))?;
                    Ok(())
                })
            }

            fn insert_signing_key_unless_pending<'a>(
                &'a self,
                k: &'a SigningKeyRecord,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<Option<$crate::stores::PendingKey>>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await.map_err(unavailable)?;
                    // PostgreSQL checks the NOT EXISTS on a snapshot: two
                    // concurrent inserts would both see no pending key. A
                    // table lock that conflicts with itself (readers still
                    // read) makes the claims take turns. SQLite takes its
                    // one write lock when the INSERT starts, before it reads.
                    if <$db as sqlx::Database>::NAME == "PostgreSQL" {
                        sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
                            .execute(&mut *tx)
                            .await
                            .map_err(unavailable)?;
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO signing_keys (kid, alg, sealed, created_at, activates_at) \
                         SELECT $1, $2, $3, $4, $5 \
                         WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE activates_at > $6)",
                    )
                    .bind(&k.kid)
                    .bind(&k.alg)
                    .bind(&k.sealed)
                    .bind(k.created_at)
                    .bind(k.activates_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("signing key"))?
                    .rows_affected();
                    let pending = if inserted == 1 {
                        None
                    } else {
                        let row: Option<(String, i64)> = sqlx::query_as(
                            "SELECT kid, activates_at FROM signing_keys WHERE activates_at > $1 \
                             ORDER BY activates_at, kid LIMIT 1",
                        )
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                        let (kid, activates_at) =
                            row.ok_or_else(|| {
                                $crate::stores::StoreError::Unavailable(
                                    "pending signing key vanished".into(),
                                )
                            })?;
                        Some($crate::stores::PendingKey { kid, activates_at })
                    };
                    tx.commit().await.map_err(unavailable)?;
                    Ok(pending)
                })
            }

            fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>> {
                Box::pin(async move {
                    let rows: Vec<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
                        "SELECT kid, alg, sealed, created_at, activates_at FROM signing_keys \
                         ORDER BY activates_at, kid LIMIT 1000",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(rows
                        .into_iter()
                        .map(|(kid, alg, sealed, created_at, activates_at)| SigningKeyRecord {
                            kid,
                            alg,
                            sealed,
                            created_at,
                            activates_at,
                        })
                        .collect())
                })
            }

            fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                        .bind(kid)
                        .execute(&self.pool)
                        .await
                        .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }
        }

        impl UserStore for $ty {
            fn insert_user<'a>(&'a self, u: &'a User) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO users (id, username, username_key, password_hash, roles, permissions, tenant, disabled, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&u.id)
                    .bind(&u.username)
                    .bind(u.username.to_lowercase())
                    .bind(&u.password_hash)
                    .bind(list_to_json(&u.roles))
                    .bind(list_to_json(&u.permissions))
                    .bind(&u.tenant)
                    .bind(u.disabled)
                    .bind(u.created_at)
                    .bind(u.updated_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("username"))?;
                    Ok(())
                })
            }

            fn user_by_username<'a>(
                &'a self,
                username: &'a Username,
            ) -> BoxFuture<'a, StoreResult<Option<User>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {USER_COLS} FROM users WHERE username_key = $1");
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(username.key())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(user_of)
                        .transpose()
                })
            }

            fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<User>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(user_of)
                        .transpose()
                })
            }

            fn set_password_hash<'a>(
                &'a self,
                id: &'a str,
                hash: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3",
                    )
                    .bind(hash)
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn replace_password_hash<'a>(
                &'a self,
                id: &'a str,
                expected: &'a str,
                hash: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    // One conditional UPDATE: PostgreSQL re-checks the WHERE
                    // on the row a concurrent writer committed, SQLite
                    // writes one statement at a time.
                    let r = sqlx::query(
                        "UPDATE users SET password_hash = $1, updated_at = $2 \
                         WHERE id = $3 AND password_hash = $4",
                    )
                    .bind(hash)
                    .bind(now)
                    .bind(id)
                    .bind(expected)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn set_user_disabled<'a>(
                &'a self,
                id: &'a str,
                disabled: bool,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    let r = sqlx::query(
                        "UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3",
                    )
                    .bind(disabled)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    let found = r.rows_affected() == 1;
                    if found {
                        let kind = RevokedKind::user_status(disabled);
                        append_revocation(&mut *tx, kind, id, session_entry_expiry(now)).await?;
                    }
                    tx.commit().await.map_err(unavailable)?;
                    Ok(found)
                })
            }

            fn set_user_grants<'a>(
                &'a self,
                id: &'a str,
                roles: &'a [String],
                permissions: &'a [String],
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE users SET roles = $1, permissions = $2, updated_at = $3 WHERE id = $4",
                    )
                    .bind(list_to_json(roles))
                    .bind(list_to_json(permissions))
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn list_users<'a>(
                &'a self,
                prefix: &'a str,
                after: Option<&'a str>,
                limit: usize,
            ) -> BoxFuture<'a, StoreResult<Vec<User>>> {
                Box::pin(async move {
                    // Paged in username_key order (the unique index); the
                    // prefix is an equality on a substring, which every
                    // collation agrees on.
                    let sql = format!(
                        "SELECT {USER_COLS} FROM users WHERE substr(username_key, 1, $1) = $2 \
                         AND username_key > $3 ORDER BY username_key LIMIT $4"
                    );
                    sqlx::query_as::<_, UserRow>(&sql)
                        .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
                        .bind(prefix)
                        .bind(after.unwrap_or(""))
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .into_iter()
                        .map(user_of)
                        .collect()
                })
            }

            fn delete_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query("DELETE FROM users WHERE id = $1")
                        .bind(id)
                        .execute(&self.pool)
                        .await
                        .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
                Some(self)
            }
        }

        impl SessionStore for $ty {
            fn purge_expired_sessions(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
                Box::pin(purge(
                    &self.pool,
                    "DELETE FROM sessions WHERE expires_at <= $1",
                    now,
                ))
            }

            fn insert_session<'a>(&'a self, s: &'a Session) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at, user_agent, client_ip, remember_me, revoked_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(&s.id)
                    .bind(&s.user_id)
                    .bind(s.created_at)
                    .bind(s.last_seen_at)
                    .bind(s.expires_at)
                    .bind(&s.user_agent)
                    .bind(&s.client_ip)
                    .bind(s.remember_me)
                    .bind(s.revoked_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("session"))?;
                    Ok(())
                })
            }

            fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Session>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1");
                    Ok(sqlx::query_as::<_, SessionRow>(&sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(session_of))
                })
            }

            fn sessions_of<'a>(
                &'a self,
                user_id: &'a str,
            ) -> BoxFuture<'a, StoreResult<Vec<Session>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1");
                    Ok(sqlx::query_as::<_, SessionRow>(&sql)
                        .bind(user_id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .into_iter()
                        .map(session_of)
                        .collect())
                })
            }

            fn touch_session<'a>(
                &'a self,
                id: &'a str,
                now: i64,
                stale_before: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE sessions SET last_seen_at = $1 \
                         WHERE id = $2 AND revoked_at IS NULL AND last_seen_at <= $3",
                    )
                    .bind(now)
                    .bind(id)
                    .bind(stale_before)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }

            fn revoke_session<'a>(
                &'a self,
                id: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    let r = sqlx::query(
                        "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    let revoked = r.rows_affected() == 1;
                    if revoked {
                        append_revocation(&mut *tx, RevokedKind::Session, id, session_entry_expiry(now))
                            .await?;
                    }
                    tx.commit().await.map_err(unavailable)?;
                    Ok(revoked)
                })
            }

            fn revoke_sessions_of<'a>(
                &'a self,
                user_id: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<u64>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    let revoked: Vec<(String,)> = sqlx::query_as(
                        "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(now)
                    .bind(user_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    for (sid,) in &revoked {
                        append_revocation(&mut *tx, RevokedKind::Session, sid, session_entry_expiry(now))
                            .await?;
                    }
                    tx.commit().await.map_err(unavailable)?;
                    Ok(revoked.len() as u64)
                })
            }

            fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
                Some(self)
            }
        }

        /// Opens a transaction that appends to the revocation log: on
        /// PostgreSQL it first takes the log's advisory lock, so appends
        /// commit in `seq` order (a follower never passes a row still to
        /// commit), and queues the `NOTIFY` that wakes the other replicas'
        /// feeds when it commits; SQLite has one writer at a time anyway.
        async fn begin_revocation(
            pool: &sqlx::Pool<$db>,
        ) -> StoreResult<sqlx::Transaction<'static, $db>> {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            for statement in <$ty>::REVOCATION_BEGIN {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            Ok(tx)
        }

        /// Appends one entry to the revocation log.
        async fn append_revocation<'e, E>(
            ex: E,
            kind: RevokedKind,
            subject: &str,
            expires_at: i64,
        ) -> StoreResult<()>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            sqlx::query("INSERT INTO revocation_log (kind, subject, expires_at) VALUES ($1, $2, $3)")
                .bind(kind.tag())
                .bind(subject)
                .bind(expires_at)
                .execute(ex)
                .await
                .map_err(unavailable)?;
            Ok(())
        }

        impl RevocationLog for $ty {
            fn revocations_after(
                &self,
                after: u64,
                now: i64,
                limit: usize,
            ) -> BoxFuture<'_, StoreResult<RevocationPage>> {
                Box::pin(async move {
                    let rows: Vec<(i64, i64, String, i64)> = sqlx::query_as(
                        "SELECT seq, kind, subject, expires_at FROM revocation_log \
                         WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
                    )
                    .bind(i64::try_from(after).unwrap_or(i64::MAX))
                    .bind(now)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    let mut page = RevocationPage {
                        entries: Vec::with_capacity(rows.len()),
                        // A SQL log is never reset under a running replica.
                        head: after,
                    };
                    for (seq, kind, subject, expires_at) in rows {
                        let seq = u64::try_from(seq)
                            .map_err(|_| StoreError::Corrupt(format!("revocation seq {seq}")))?;
                        page.head = page.head.max(seq);
                        page.entries.push(LoggedRevocation {
                            seq,
                            kind: RevokedKind::from_tag(kind),
                            subject,
                            expires_at,
                        });
                    }
                    Ok(page)
                })
            }

            fn purge_revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
                Box::pin(purge(
                    &self.pool,
                    "DELETE FROM revocation_log WHERE expires_at <= $1",
                    now,
                ))
            }

            fn watch(&self, on_append: super::AppendSignal) -> Option<BoxFuture<'static, ()>> {
                self.watch_revocations(on_append)
            }
        }

        /// Runs a purging `DELETE` with `$1` bound to `bound`; rows deleted.
        async fn purge(pool: &sqlx::Pool<$db>, sql: &'static str, bound: i64) -> StoreResult<u64> {
            Ok(sqlx::query(sql)
                .bind(bound)
                .execute(pool)
                .await
                .map_err(unavailable)?
                .rows_affected())
        }

        impl RefreshStore for $ty {
            fn purge_expired_refresh(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
                Box::pin(purge(
                    &self.pool,
                    "DELETE FROM refresh_tokens WHERE expires_at <= $1",
                    before,
                ))
            }

            fn insert_refresh<'a>(
                &'a self,
                r: &'a RefreshRecord,
            ) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    insert_refresh_row(&self.pool, r).await
                })
            }

            fn refresh_by_hash<'a>(
                &'a self,
                hash: &'a [u8; 32],
            ) -> BoxFuture<'a, StoreResult<Option<RefreshRecord>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {REFRESH_COLS} FROM refresh_tokens WHERE hash = $1");
                    sqlx::query_as::<_, RefreshRow>(&sql)
                        .bind(&hash[..])
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(refresh_of)
                        .transpose()
                })
            }

            fn rotate_refresh<'a>(
                &'a self,
                old: &'a [u8; 32],
                successor: &'a RefreshRecord,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    // Write first: the UPDATE takes the row (PostgreSQL) or
                    // the database (SQLite) write lock, so of concurrent
                    // rotations exactly one sees a row affected.
                    let mut tx = self.pool.begin().await.map_err(unavailable)?;
                    let r = sqlx::query(
                        "UPDATE refresh_tokens SET rotated_at = $1, successor = $2 \
                         WHERE hash = $3 AND rotated_at IS NULL AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(&successor.hash[..])
                    .bind(&old[..])
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    if r.rows_affected() != 1 {
                        tx.rollback().await.map_err(unavailable)?;
                        return Ok(false);
                    }
                    insert_refresh_row(&mut *tx, successor).await?;
                    tx.commit().await.map_err(unavailable)?;
                    Ok(true)
                })
            }

            fn revoke_family<'a>(
                &'a self,
                family: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<u64>> {
                Box::pin(async move {
                    revoke_until_done(
                        &self.pool,
                        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
                        family,
                        now,
                    )
                    .await
                })
            }

            fn revoke_families_of<'a>(
                &'a self,
                user_id: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<u64>> {
                Box::pin(async move {
                    revoke_until_done(
                        &self.pool,
                        "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
                        user_id,
                        now,
                    )
                    .await
                })
            }

            fn claim_reuse_grace<'a>(
                &'a self,
                _family: &'a str,
                hash: &'a [u8; 32],
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let r = sqlx::query(
                        "UPDATE refresh_tokens SET grace_claimed_at = $1 \
                         WHERE hash = $2 AND grace_claimed_at IS NULL AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(&hash[..])
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(r.rows_affected() == 1)
                })
            }
        }

        impl Denylist for $ty {
            fn deny<'a>(&'a self, jti: &'a str, expires_at: i64) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    sqlx::query(
                        "INSERT INTO denylist (jti, expires_at) VALUES ($1, $2) \
                         ON CONFLICT (jti) DO UPDATE SET expires_at = excluded.expires_at \
                         WHERE excluded.expires_at > denylist.expires_at",
                    )
                    .bind(jti)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    append_revocation(&mut *tx, RevokedKind::Jti, jti, expires_at).await?;
                    tx.commit().await.map_err(unavailable)?;
                    Ok(())
                })
            }

            fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
                Some(self)
            }

            fn is_denied<'a>(&'a self, jti: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let hit: Option<(i64,)> = sqlx::query_as(
                        "SELECT expires_at FROM denylist WHERE jti = $1 AND expires_at > $2",
                    )
                    .bind(jti)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(hit.is_some())
                })
            }

            fn purge_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
                Box::pin(async move {
                    let r = sqlx::query("DELETE FROM denylist WHERE expires_at <= $1")
                        .bind(now)
                        .execute(&self.pool)
                        .await
                        .map_err(unavailable)?;
                    Ok(r.rows_affected())
                })
            }
        }

        impl ApiKeyStore for $ty {
            fn purge_expired_api_keys(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
                Box::pin(purge(
                    &self.pool,
                    "DELETE FROM api_keys WHERE expires_at IS NOT NULL AND expires_at <= $1",
                    before,
                ))
            }

            fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
                Some(self)
            }

            fn insert_api_key<'a>(&'a self, k: &'a ApiKeyRecord) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO api_keys (id, hash, name, owner, roles, permissions, scopes, expires_at, created_at, revoked_at, last_used_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&k.id)
                    .bind(&k.hash[..])
                    .bind(&k.name)
                    .bind(&k.owner)
                    .bind(list_to_json(&k.roles))
                    .bind(list_to_json(&k.permissions))
                    .bind(list_to_json(&k.scopes))
                    .bind(k.expires_at)
                    .bind(k.created_at)
                    .bind(k.revoked_at)
                    .bind(k.last_used_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("API key"))?;
                    Ok(())
                })
            }

            fn api_key<'a>(
                &'a self,
                id: &'a str,
            ) -> BoxFuture<'a, StoreResult<Option<std::sync::Arc<ApiKeyRecord>>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {API_KEY_COLS} FROM api_keys WHERE id = $1");
                    Ok(sqlx::query_as::<_, ApiKeyRow>(&sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(api_key_of)
                        .transpose()?
                        .map(std::sync::Arc::new))
                })
            }

            fn api_keys_of<'a>(
                &'a self,
                owner: &'a str,
            ) -> BoxFuture<'a, StoreResult<Vec<ApiKeyRecord>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {API_KEY_COLS} FROM api_keys WHERE owner = $1");
                    sqlx::query_as::<_, ApiKeyRow>(&sql)
                        .bind(owner)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .into_iter()
                        .map(api_key_of)
                        .collect()
                })
            }

            fn revoke_api_key<'a>(
                &'a self,
                id: &'a str,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    let r = sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    let revoked = r.rows_affected() == 1;
                    if revoked {
                        append_revocation(&mut *tx, RevokedKind::ApiKey, id, session_entry_expiry(now))
                            .await?;
                    }
                    tx.commit().await.map_err(unavailable)?;
                    Ok(revoked)
                })
            }

            fn touch_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE api_keys SET last_used_at = $1 \
                         WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
                    )
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    Ok(())
                })
            }
        }

        impl AppStore for $ty {
            fn insert_app<'a>(&'a self, a: &'a AppRecord) -> BoxFuture<'a, StoreResult<()>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO apps (app_id, name, secret_hash, secret_version, previous_hash, previous_valid_until, services, permissions, tenant, disabled, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    )
                    .bind(&a.app_id)
                    .bind(&a.name)
                    .bind(&a.secret_hash[..])
                    .bind(i64::from(a.secret_version))
                    .bind(a.previous_hash.as_ref().map(|h| h.to_vec()))
                    .bind(a.previous_valid_until)
                    .bind(list_to_json(&a.services))
                    .bind(list_to_json(&a.permissions))
                    .bind(&a.tenant)
                    .bind(a.disabled)
                    .bind(a.created_at)
                    .bind(a.updated_at)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("app"))?;
                    Ok(())
                })
            }

            fn app<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, StoreResult<Option<AppRecord>>> {
                Box::pin(async move {
                    let sql = format!("SELECT {APP_COLS} FROM apps WHERE app_id = $1");
                    sqlx::query_as::<_, AppRow>(&sql)
                        .bind(app_id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .map(app_of)
                        .transpose()
                })
            }

            fn rotate_app_secret<'a>(
                &'a self,
                app_id: &'a str,
                new_hash: &'a [u8; 32],
                previous_valid_until: i64,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<Option<u32>>> {
                Box::pin(async move {
                    let version: Option<(i64,)> = sqlx::query_as(
                        "UPDATE apps SET previous_hash = secret_hash, previous_valid_until = $1, \
                         secret_hash = $2, secret_version = secret_version + 1, updated_at = $3 \
                         WHERE app_id = $4 RETURNING secret_version",
                    )
                    .bind(previous_valid_until)
                    .bind(&new_hash[..])
                    .bind(now)
                    .bind(app_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                    version
                        .map(|(v,)| $crate::stores::sql::u32_of("secret_version", v))
                        .transpose()
                })
            }

            fn set_app_disabled<'a>(
                &'a self,
                app_id: &'a str,
                disabled: bool,
                now: i64,
            ) -> BoxFuture<'a, StoreResult<bool>> {
                Box::pin(async move {
                    let mut tx = begin_revocation(&self.pool).await?;
                    let r = sqlx::query(
                        "UPDATE apps SET disabled = $1, updated_at = $2 WHERE app_id = $3",
                    )
                    .bind(disabled)
                    .bind(now)
                    .bind(app_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    let found = r.rows_affected() == 1;
                    if found {
                        let kind = RevokedKind::app_status(disabled);
                        append_revocation(&mut *tx, kind, app_id, session_entry_expiry(now))
                            .await?;
                    }
                    tx.commit().await.map_err(unavailable)?;
                    Ok(found)
                })
            }

            fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
                Some(self)
            }
        }
    };
}
pub(crate) use sql_stores;

//! What the SQLite and PostgreSQL backends share: the embedded migrations
//! source, the row types and every store operation ([`Sql`]), each SQL
//! statement written once (`$n` placeholders work on both). Each backend's
//! trait implementations call [`Sql`].

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::migrate::{Migration, MigrationSource, MigrationType};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Row,
    Transaction, Type,
};

use super::revocation_set::session_entry_expiry;
use super::{
    ApiKeyRecord, AppRecord, BoxFuture, LoggedRevocation, PendingKey, RefreshRecord,
    RevocationPage, RevokedKind, Session, SigningKeyRecord, StoreError, StoreResult, User,
    Username,
};

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

// The row structs below read every field by column name
// (`row.try_get("name")`), never by position: a column list out of order
// cannot fill the wrong field. Their `FromRow` is generic over the row type,
// so SQLite and PostgreSQL share them.

/// Column list of `users`.
pub const USER_COLS: &str =
    "id, username, password_hash, roles, permissions, tenant, disabled, created_at, updated_at";

/// A `users` row.
#[derive(Debug)]
pub struct UserRow {
    pub(crate) id: String,
    pub(crate) username: String,
    pub(crate) password_hash: String,
    pub(crate) roles: String,
    pub(crate) permissions: String,
    pub(crate) tenant: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl<'r, R: Row> FromRow<'r, R> for UserRow
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
            roles: row.try_get("roles")?,
            permissions: row.try_get("permissions")?,
            tenant: row.try_get("tenant")?,
            disabled: row.try_get("disabled")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// Column list of `sessions`.
pub const SESSION_COLS: &str = "id, user_id, created_at, last_seen_at, expires_at, user_agent, client_ip, remember_me, revoked_at";

/// A `sessions` row.
#[derive(Debug)]
pub struct SessionRow {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) created_at: i64,
    pub(crate) last_seen_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) user_agent: Option<String>,
    pub(crate) client_ip: Option<String>,
    pub(crate) remember_me: bool,
    pub(crate) revoked_at: Option<i64>,
}

impl<'r, R: Row> FromRow<'r, R> for SessionRow
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            created_at: row.try_get("created_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            expires_at: row.try_get("expires_at")?,
            user_agent: row.try_get("user_agent")?,
            client_ip: row.try_get("client_ip")?,
            remember_me: row.try_get("remember_me")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// Column list of `refresh_tokens`.
pub const REFRESH_COLS: &str = "hash, family, generation, session_id, user_id, expires_at, remember_me, created_at, rotated_at, successor, revoked_at";

/// A `refresh_tokens` row.
#[derive(Debug)]
pub struct RefreshRow {
    pub(crate) hash: Vec<u8>,
    pub(crate) family: String,
    pub(crate) generation: i64,
    pub(crate) session_id: String,
    pub(crate) user_id: String,
    pub(crate) expires_at: i64,
    pub(crate) remember_me: bool,
    pub(crate) created_at: i64,
    pub(crate) rotated_at: Option<i64>,
    pub(crate) successor: Option<Vec<u8>>,
    pub(crate) revoked_at: Option<i64>,
}

impl<'r, R: Row> FromRow<'r, R> for RefreshRow
where
    &'r str: ColumnIndex<R>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: row.try_get("hash")?,
            family: row.try_get("family")?,
            generation: row.try_get("generation")?,
            session_id: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            expires_at: row.try_get("expires_at")?,
            remember_me: row.try_get("remember_me")?,
            created_at: row.try_get("created_at")?,
            rotated_at: row.try_get("rotated_at")?,
            successor: row.try_get("successor")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// Column list of `api_keys`.
pub const API_KEY_COLS: &str = "id, hash, name, owner, roles, permissions, scopes, expires_at, created_at, revoked_at, last_used_at";

/// An `api_keys` row.
#[derive(Debug)]
pub struct ApiKeyRow {
    pub(crate) id: String,
    pub(crate) hash: Vec<u8>,
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) roles: String,
    pub(crate) permissions: String,
    pub(crate) scopes: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

impl<'r, R: Row> FromRow<'r, R> for ApiKeyRow
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            hash: row.try_get("hash")?,
            name: row.try_get("name")?,
            owner: row.try_get("owner")?,
            roles: row.try_get("roles")?,
            permissions: row.try_get("permissions")?,
            scopes: row.try_get("scopes")?,
            expires_at: row.try_get("expires_at")?,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
            last_used_at: row.try_get("last_used_at")?,
        })
    }
}

/// Column list of `apps`.
pub const APP_COLS: &str = "app_id, name, secret_hash, secret_version, previous_hash, previous_valid_until, services, permissions, tenant, disabled, created_at, updated_at";

/// An `apps` row.
#[derive(Debug)]
pub struct AppRow {
    pub(crate) app_id: String,
    pub(crate) name: String,
    pub(crate) secret_hash: Vec<u8>,
    pub(crate) secret_version: i64,
    pub(crate) previous_hash: Option<Vec<u8>>,
    pub(crate) previous_valid_until: Option<i64>,
    pub(crate) services: String,
    pub(crate) permissions: String,
    pub(crate) tenant: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl<'r, R: Row> FromRow<'r, R> for AppRow
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            app_id: row.try_get("app_id")?,
            name: row.try_get("name")?,
            secret_hash: row.try_get("secret_hash")?,
            secret_version: row.try_get("secret_version")?,
            previous_hash: row.try_get("previous_hash")?,
            previous_valid_until: row.try_get("previous_valid_until")?,
            services: row.try_get("services")?,
            permissions: row.try_get("permissions")?,
            tenant: row.try_get("tenant")?,
            disabled: row.try_get("disabled")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

pub(crate) fn user_of(r: UserRow) -> StoreResult<User> {
    Ok(User {
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

pub(crate) fn session_of(r: SessionRow) -> Session {
    Session {
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

pub(crate) fn refresh_of(r: RefreshRow) -> StoreResult<RefreshRecord> {
    Ok(RefreshRecord {
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

pub(crate) fn api_key_of(r: ApiKeyRow) -> StoreResult<ApiKeyRecord> {
    Ok(ApiKeyRecord {
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

pub(crate) fn app_of(r: AppRow) -> StoreResult<AppRecord> {
    Ok(AppRecord {
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

/// What a backend's database adds to [`sqlx::Database`] for [`Sql`].
pub(crate) trait SqlDb: Database {
    /// Rows an `INSERT`, `UPDATE` or `DELETE` affected (each driver has
    /// its own query result type).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// Every store operation, written once for SQLite and PostgreSQL: the
/// backends' trait implementations (`SqliteStores`, `PostgresStores`) call
/// these. Every statement uses `$n` placeholders, which both databases read.
pub(crate) struct Sql<'p, DB: Database> {
    /// The backend's pool.
    pub(crate) pool: &'p Pool<DB>,
    /// Run first by every transaction that appends to the revocation log.
    pub(crate) revocation_begin: &'static [&'static str],
}

impl<DB: Database> Clone for Sql<'_, DB> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<DB: Database> Copy for Sql<'_, DB> {}

/// The values `Sql` binds and reads, as the bounds each driver meets.
impl<'p, DB> Sql<'p, DB>
where
    DB: SqlDb,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
{
    async fn insert_refresh_row<'e, E>(ex: E, r: &RefreshRecord) -> StoreResult<()>
    where
        E: Executor<'e, Database = DB>,
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
    async fn revoke_until_done(self, sql: &'static str, key: &str, now: i64) -> StoreResult<u64> {
        let mut total = 0;
        for _ in 0..16 {
            let n = DB::rows_affected(
                &sqlx::query(sql)
                    .bind(now)
                    .bind(key)
                    .execute(self.pool)
                    .await
                    .map_err(unavailable)?,
            );
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    }

    /// Opens a transaction that appends to the revocation log: on
    /// PostgreSQL it first takes the log's advisory lock, so appends
    /// commit in `seq` order (a follower never passes a row still to
    /// commit), and queues the `NOTIFY` that wakes the other replicas'
    /// feeds when it commits; SQLite has one writer at a time anyway.
    async fn begin_revocation(self) -> StoreResult<Transaction<'static, DB>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for statement in self.revocation_begin {
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
        E: Executor<'e, Database = DB>,
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

    /// Runs a purging `DELETE` with `$1` bound to `bound`; rows deleted.
    async fn purge(self, sql: &'static str, bound: i64) -> StoreResult<u64> {
        Ok(DB::rows_affected(
            &sqlx::query(sql)
                .bind(bound)
                .execute(self.pool)
                .await
                .map_err(unavailable)?,
        ))
    }

    // SigningKeyStore

    pub(crate) async fn insert_signing_key(self, k: &SigningKeyRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed, created_at, activates_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.sealed)
        .bind(k.created_at)
        .bind(k.activates_at)
        .execute(self.pool)
        .await
        .map_err(db_err("signing key"))?;
        Ok(())
    }

    pub(crate) async fn insert_signing_key_unless_pending(
        self,
        k: &SigningKeyRecord,
        now: i64,
    ) -> StoreResult<Option<PendingKey>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // PostgreSQL checks the NOT EXISTS on a snapshot: two
        // concurrent inserts would both see no pending key. A
        // table lock that conflicts with itself (readers still
        // read) makes the claims take turns. SQLite takes its
        // one write lock when the INSERT starts, before it reads.
        if DB::NAME == "PostgreSQL" {
            sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let inserted = DB::rows_affected(
            &sqlx::query(
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
            .map_err(db_err("signing key"))?,
        );
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
                row.ok_or_else(|| StoreError::Unavailable("pending signing key vanished".into()))?;
            Some(PendingKey { kid, activates_at })
        };
        tx.commit().await.map_err(unavailable)?;
        Ok(pending)
    }

    pub(crate) async fn signing_keys(self) -> StoreResult<Vec<SigningKeyRecord>> {
        let rows: Vec<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
            "SELECT kid, alg, sealed, created_at, activates_at FROM signing_keys \
             ORDER BY activates_at, kid LIMIT 1000",
        )
        .fetch_all(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(
                |(kid, alg, sealed, created_at, activates_at)| SigningKeyRecord {
                    kid,
                    alg,
                    sealed,
                    created_at,
                    activates_at,
                },
            )
            .collect())
    }

    pub(crate) async fn delete_signing_key(self, kid: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(self.pool)
            .await
            .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    // UserStore

    pub(crate) async fn insert_user(self, u: &User) -> StoreResult<()> {
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
        .execute(self.pool)
        .await
        .map_err(db_err("username"))?;
        Ok(())
    }

    pub(crate) async fn user_by_username(self, username: &Username) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE username_key = $1");
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(username.key())
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(user_of)
            .transpose()
    }

    pub(crate) async fn user_by_id(self, id: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(id)
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(user_of)
            .transpose()
    }

    pub(crate) async fn set_password_hash(
        self,
        id: &str,
        hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now)
            .bind(id)
            .execute(self.pool)
            .await
            .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    pub(crate) async fn replace_password_hash(
        self,
        id: &str,
        expected: &str,
        hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
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
        .execute(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    pub(crate) async fn set_user_disabled(
        self,
        id: &str,
        disabled: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_revocation().await?;
        let r = sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
            .bind(disabled)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let found = DB::rows_affected(&r) == 1;
        if found {
            let kind = RevokedKind::user_status(disabled);
            Self::append_revocation(&mut *tx, kind, id, session_entry_expiry(now)).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(found)
    }

    pub(crate) async fn set_user_grants(
        self,
        id: &str,
        roles: &[String],
        permissions: &[String],
        now: i64,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE users SET roles = $1, permissions = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(list_to_json(roles))
        .bind(list_to_json(permissions))
        .bind(now)
        .bind(id)
        .execute(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    pub(crate) async fn list_users(
        self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>> {
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
            .fetch_all(self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(user_of)
            .collect()
    }

    pub(crate) async fn delete_user(self, id: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(self.pool)
            .await
            .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    // SessionStore

    pub(crate) async fn purge_expired_sessions(self, now: i64) -> StoreResult<u64> {
        self.purge("DELETE FROM sessions WHERE expires_at <= $1", now)
            .await
    }

    pub(crate) async fn insert_session(self, s: &Session) -> StoreResult<()> {
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
        .execute(self.pool)
        .await
        .map_err(db_err("session"))?;
        Ok(())
    }

    pub(crate) async fn session(self, id: &str) -> StoreResult<Option<Session>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1");
        Ok(sqlx::query_as::<_, SessionRow>(&sql)
            .bind(id)
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(session_of))
    }

    pub(crate) async fn sessions_of(self, user_id: &str) -> StoreResult<Vec<Session>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1");
        Ok(sqlx::query_as::<_, SessionRow>(&sql)
            .bind(user_id)
            .fetch_all(self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(session_of)
            .collect())
    }

    pub(crate) async fn touch_session(
        self,
        id: &str,
        now: i64,
        stale_before: i64,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 \
             WHERE id = $2 AND revoked_at IS NULL AND last_seen_at <= $3",
        )
        .bind(now)
        .bind(id)
        .bind(stale_before)
        .execute(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    pub(crate) async fn revoke_session(self, id: &str, now: i64) -> StoreResult<bool> {
        let mut tx = self.begin_revocation().await?;
        let r =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        let revoked = DB::rows_affected(&r) == 1;
        if revoked {
            Self::append_revocation(
                &mut *tx,
                RevokedKind::Session,
                id,
                session_entry_expiry(now),
            )
            .await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(revoked)
    }

    pub(crate) async fn revoke_sessions_of(self, user_id: &str, now: i64) -> StoreResult<u64> {
        let mut tx = self.begin_revocation().await?;
        let revoked: Vec<(String,)> = sqlx::query_as(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING id",
        )
        .bind(now)
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        for (sid,) in &revoked {
            Self::append_revocation(
                &mut *tx,
                RevokedKind::Session,
                sid,
                session_entry_expiry(now),
            )
            .await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(revoked.len() as u64)
    }

    // RevocationLog

    pub(crate) async fn revocations_after(
        self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> StoreResult<RevocationPage> {
        let rows: Vec<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT seq, kind, subject, expires_at FROM revocation_log \
             WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool)
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
    }

    pub(crate) async fn purge_revocations(self, now: i64) -> StoreResult<u64> {
        self.purge("DELETE FROM revocation_log WHERE expires_at <= $1", now)
            .await
    }

    // RefreshStore

    pub(crate) async fn purge_expired_refresh(self, before: i64) -> StoreResult<u64> {
        self.purge("DELETE FROM refresh_tokens WHERE expires_at <= $1", before)
            .await
    }

    pub(crate) async fn insert_refresh(self, r: &RefreshRecord) -> StoreResult<()> {
        Self::insert_refresh_row(self.pool, r).await
    }

    pub(crate) async fn refresh_by_hash(
        self,
        hash: &[u8; 32],
    ) -> StoreResult<Option<RefreshRecord>> {
        let sql = format!("SELECT {REFRESH_COLS} FROM refresh_tokens WHERE hash = $1");
        sqlx::query_as::<_, RefreshRow>(&sql)
            .bind(&hash[..])
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(refresh_of)
            .transpose()
    }

    pub(crate) async fn rotate_refresh(
        self,
        old: &[u8; 32],
        successor: &RefreshRecord,
        now: i64,
    ) -> StoreResult<bool> {
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
        if DB::rows_affected(&r) != 1 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(false);
        }
        Self::insert_refresh_row(&mut *tx, successor).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    pub(crate) async fn revoke_family(self, family: &str, now: i64) -> StoreResult<u64> {
        self.revoke_until_done(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
            family,
            now,
        )
        .await
    }

    pub(crate) async fn revoke_families_of(self, user_id: &str, now: i64) -> StoreResult<u64> {
        self.revoke_until_done(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            user_id,
            now,
        )
        .await
    }

    pub(crate) async fn claim_reuse_grace(self, hash: &[u8; 32], now: i64) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET grace_claimed_at = $1 \
             WHERE hash = $2 AND grace_claimed_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&hash[..])
        .execute(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(DB::rows_affected(&r) == 1)
    }

    // Denylist

    pub(crate) async fn deny(self, jti: &str, expires_at: i64) -> StoreResult<()> {
        let mut tx = self.begin_revocation().await?;
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
        Self::append_revocation(&mut *tx, RevokedKind::Jti, jti, expires_at).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn is_denied(self, jti: &str, now: i64) -> StoreResult<bool> {
        let hit: Option<(i64,)> =
            sqlx::query_as("SELECT expires_at FROM denylist WHERE jti = $1 AND expires_at > $2")
                .bind(jti)
                .bind(now)
                .fetch_optional(self.pool)
                .await
                .map_err(unavailable)?;
        Ok(hit.is_some())
    }

    pub(crate) async fn purge_expired(self, now: i64) -> StoreResult<u64> {
        self.purge("DELETE FROM denylist WHERE expires_at <= $1", now)
            .await
    }

    // ApiKeyStore

    pub(crate) async fn purge_expired_api_keys(self, before: i64) -> StoreResult<u64> {
        self.purge(
            "DELETE FROM api_keys WHERE expires_at IS NOT NULL AND expires_at <= $1",
            before,
        )
        .await
    }

    pub(crate) async fn insert_api_key(self, k: &ApiKeyRecord) -> StoreResult<()> {
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
        .execute(self.pool)
        .await
        .map_err(db_err("API key"))?;
        Ok(())
    }

    pub(crate) async fn api_key(self, id: &str) -> StoreResult<Option<Arc<ApiKeyRecord>>> {
        let sql = format!("SELECT {API_KEY_COLS} FROM api_keys WHERE id = $1");
        Ok(sqlx::query_as::<_, ApiKeyRow>(&sql)
            .bind(id)
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(api_key_of)
            .transpose()?
            .map(Arc::new))
    }

    pub(crate) async fn api_keys_of(self, owner: &str) -> StoreResult<Vec<ApiKeyRecord>> {
        let sql = format!("SELECT {API_KEY_COLS} FROM api_keys WHERE owner = $1");
        sqlx::query_as::<_, ApiKeyRow>(&sql)
            .bind(owner)
            .fetch_all(self.pool)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(api_key_of)
            .collect()
    }

    pub(crate) async fn revoke_api_key(self, id: &str, now: i64) -> StoreResult<bool> {
        let mut tx = self.begin_revocation().await?;
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        let revoked = DB::rows_affected(&r) == 1;
        if revoked {
            Self::append_revocation(&mut *tx, RevokedKind::ApiKey, id, session_entry_expiry(now))
                .await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(revoked)
    }

    pub(crate) async fn touch_api_key(self, id: &str, at: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 \
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(at)
        .bind(id)
        .execute(self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    // AppStore

    pub(crate) async fn insert_app(self, a: &AppRecord) -> StoreResult<()> {
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
        .execute(self.pool)
        .await
        .map_err(db_err("app"))?;
        Ok(())
    }

    pub(crate) async fn app(self, app_id: &str) -> StoreResult<Option<AppRecord>> {
        let sql = format!("SELECT {APP_COLS} FROM apps WHERE app_id = $1");
        sqlx::query_as::<_, AppRow>(&sql)
            .bind(app_id)
            .fetch_optional(self.pool)
            .await
            .map_err(unavailable)?
            .map(app_of)
            .transpose()
    }

    pub(crate) async fn rotate_app_secret(
        self,
        app_id: &str,
        new_hash: &[u8; 32],
        previous_valid_until: i64,
        now: i64,
    ) -> StoreResult<Option<u32>> {
        let version: Option<(i64,)> = sqlx::query_as(
            "UPDATE apps SET previous_hash = secret_hash, previous_valid_until = $1, \
             secret_hash = $2, secret_version = secret_version + 1, updated_at = $3 \
             WHERE app_id = $4 RETURNING secret_version",
        )
        .bind(previous_valid_until)
        .bind(&new_hash[..])
        .bind(now)
        .bind(app_id)
        .fetch_optional(self.pool)
        .await
        .map_err(unavailable)?;
        version.map(|(v,)| u32_of("secret_version", v)).transpose()
    }

    pub(crate) async fn set_app_disabled(
        self,
        app_id: &str,
        disabled: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_revocation().await?;
        let r = sqlx::query("UPDATE apps SET disabled = $1, updated_at = $2 WHERE app_id = $3")
            .bind(disabled)
            .bind(now)
            .bind(app_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let found = DB::rows_affected(&r) == 1;
        if found {
            let kind = RevokedKind::app_status(disabled);
            Self::append_revocation(&mut *tx, kind, app_id, session_entry_expiry(now)).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(found)
    }
}

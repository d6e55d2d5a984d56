//! Every store on Redis (single server or Cluster), through the shared
//! [`RedisConnection`]. Typically the hot, expiring state: the denylist,
//! refresh families and session revocation.
//!
//! Keys (`P` = the prefix; braces are removed from it):
//! - `P:jti:<jti>`: `1` expiring at `exp` (a script keeps the later expiry
//!   when denied twice); a check is one `EXISTS`.
//! - `P:rt:{<family>}:<hex hash>`: a refresh record (hash: `data` JSON plus
//!   `rotated_at`, `successor`, `revoked_at`), with `P:rtf:{<family>}` (the
//!   family's member set) on the same Cluster slot, so rotation is one Lua
//!   script; `P:rth:<hex hash>` maps a token hash to its family.
//! - `P:user:<id>` (`data` JSON plus mutable fields) and `P:uname:<key>`
//!   (`SET NX`: case-insensitive uniqueness).
//! - `P:ufam:<user>`: the user's families (disabling a user revokes them).
//! - `P:sess:<sid>` and `P:usess:<user>` (the user's session ids).
//! - `P:ak:<id>` and `P:ako:<owner>`; `P:app:<id>`.
//! - `P:signing_keys`: rotated-in signing keys, a hash of kid → record JSON
//!   (the private key sealed), never expiring (the key ring deletes
//!   retired ones).
//! - The revocation log every replica's local set follows, on one Cluster
//!   slot: `P:{rev}:seq` (the last sequence number), `P:{rev}:log` (entries
//!   `seq:kind:expires_at:subject` scored by `seq`) and `P:{rev}:exp` (the
//!   same members scored by expiry, for purging). An entry is appended
//!   before the state it revokes is written (the two live on different
//!   slots), so a failure in between leaves the token refused, never
//!   admitted.
//!
//! Records expire with their tokens (refresh: a day after `expires_at`, so
//! a late replay is still recognised as reuse; sessions: at expiry), and
//! index sets live as long as their longest-lived member.

use std::collections::HashMap;

use redis::{AsyncCommands, Script};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::redis_conn::RedisConnection;

use super::revocation_set::session_entry_expiry;
use super::{
    ApiKeyRecord, ApiKeyStore, AppRecord, AppStore, BoxFuture, Denylist, LoggedRevocation,
    PendingKey, RefreshRecord, RefreshStore, RevocationLog, RevocationPage, RevokedKind, Session,
    SessionStore, SigningKeyRecord, SigningKeyStore, StoreError, StoreResult, User, UserStore,
    Username,
};

/// Rotation compare-and-set: KEYS old, new, family set; ARGV now, new hex,
/// new data JSON, new expiry (Unix ms). 1 when this call won.
const ROTATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'rotated_at') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rotated_at', ARGV[1], 'successor', ARGV[2])
redis.call('HSET', KEYS[2], 'data', ARGV[3])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('PEXPIREAT', KEYS[3], ARGV[4])
return 1
";

/// Revokes a family in one step: `revoked_at = ARGV[2]` on every member of
/// the family set KEYS[1] lacking it (member keys are `ARGV[1] .. hex`, on
/// the family's slot), so a concurrent rotation is wholly before or after.
const REVOKE_FAMILY: &str = r"
local n = 0
for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. h
  if redis.call('EXISTS', k) == 1 and redis.call('HSETNX', k, 'revoked_at', ARGV[2]) == 1 then
    n = n + 1
  end
end
return n
";

/// The one hand-out of a rotated token's successor within the reuse
/// window: KEYS[1] the token's record; ARGV[1] now. 1 for the first caller.
const CLAIM_GRACE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
return redis.call('HSETNX', KEYS[1], 'grace_at', ARGV[1])
";

/// Adds ARGV[1] to the index set KEYS[1] and makes the set live at least
/// until ARGV[2] (Unix ms; 0: a member that never expires, so neither does
/// the set). A set already without expiry keeps none.
const INDEX_ADD: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local at = tonumber(ARGV[2])
if at == 0 then
  redis.call('PERSIST', KEYS[1])
elseif ttl ~= -1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if ttl == -2 or ttl < at - now then
    redis.call('PEXPIREAT', KEYS[1], at)
  end
end
return 1
";

/// Sets `ARGV[1] = ARGV[2]` on every existing KEY lacking that field;
/// returns how many were changed.
const SET_ONCE: &str = r"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 and redis.call('HSETNX', k, ARGV[1], ARGV[2]) == 1 then
    n = n + 1
  end
end
return n
";

/// HSET ARGV pairs on KEYS[1] only if it exists; 1 when it did.
const SET_IF_EXISTS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// Password compare-and-set on the user hash KEYS[1]: the current hash
/// (the `password_hash` field, else the one in `data`) must be ARGV[1].
/// ARGV: expected, new hash, now. 1 when swapped.
const REPLACE_PASSWORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'password_hash')
if not cur then
  cur = cjson.decode(redis.call('HGET', KEYS[1], 'data')).password_hash
end
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[2], 'updated_at', ARGV[3])
return 1
";

/// Signing-key insert unless a stored key in the hash KEYS[1] activates
/// after ARGV[1] (now). ARGV: now, kid, record JSON. `{}` when stored,
/// `{kid, activates_at}` of the pending key, `{'', -1}` when the kid is taken.
const INSERT_KEY_UNLESS_PENDING: &str = r"
local best_kid, best_at = nil, nil
for _, data in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, rec = pcall(cjson.decode, data)
  if ok and type(rec) == 'table' then
    local at = tonumber(rec.activates_at)
    if at and at > tonumber(ARGV[1]) and (best_at == nil or at < best_at) then
      best_kid, best_at = rec.kid, at
    end
  end
end
if best_at then return {tostring(best_kid), string.format('%d', best_at)} end
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return {'', '-1'} end
return {}
";

/// App secret rotation: the current hash becomes the previous one and the
/// version is incremented here (concurrent rotations get distinct versions).
/// ARGV: valid-until, new hash hex, now. The new version, or 0 when absent.
const ROTATE_APP: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'secret_hash')
local version = tonumber(redis.call('HGET', KEYS[1], 'secret_version'))
if not version then
  version = tonumber(cjson.decode(redis.call('HGET', KEYS[1], 'data')).secret_version)
end
version = version + 1
redis.call('HSET', KEYS[1], 'previous_hash', cur, 'previous_valid_until', ARGV[1],
  'secret_hash', ARGV[2], 'secret_version', version, 'updated_at', ARGV[3])
return version
";

/// Denies KEYS[1] until ARGV[1] (Unix ms), keeping a later expiry already set.
const DENY: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then return 0 end
if ttl >= 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now + ttl >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], 1, 'PXAT', ARGV[1])
return 1
";

/// Appends entries to the revocation log, all or none: KEYS seq, log, exp;
/// ARGV one triple per entry: kind tag, expires_at (Unix s), subject.
/// Returns the last entry's sequence number.
const APPEND_REVOCATION: &str = r"
local seq = 0
for i = 1, #ARGV, 3 do
  seq = redis.call('INCR', KEYS[1])
  local member = seq .. ':' .. ARGV[i] .. ':' .. ARGV[i + 1] .. ':' .. ARGV[i + 2]
  redis.call('ZADD', KEYS[2], seq, member)
  redis.call('ZADD', KEYS[3], ARGV[i + 1], member)
end
return seq
";

/// Sets the `disabled` flag of the record KEYS[1] as of the log entry
/// ARGV[1] (its sequence): written only if no later entry's change is
/// already there, so concurrent disable/enable calls leave the record as
/// the log's last entry says, whatever order they land in. ARGV: sequence,
/// disabled ("1"/"0"), now. 0 when the record is absent, else 1.
const SET_STATUS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seen = tonumber(redis.call('HGET', KEYS[1], 'status_seq')) or 0
if seen < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'disabled', ARGV[2], 'status_seq', ARGV[1], 'updated_at', ARGV[3])
end
return 1
";

/// Entries one append script call writes at most (a script blocks the
/// server); a logout of more sessions appends in several calls.
const APPEND_BATCH: usize = 1_000;

/// Reads the revocation log: KEYS seq, log; ARGV after, limit. Returns the
/// head (as text) followed by up to `limit` pairs (member, score) with
/// `seq > after`: the score is the sequence, so the cursor moves past a
/// member whatever its text holds.
const READ_REVOCATIONS: &str = r"
local head = redis.call('GET', KEYS[1]) or '0'
local page = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, ARGV[2])
table.insert(page, 1, head)
return page
";

/// Drops up to ARGV[2] entries expired at ARGV[1]: KEYS log, exp. Returns
/// how many.
const PURGE_REVOCATIONS: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
end
return #gone
";

/// Entries one purge script call drops at most (a script blocks the server).
const PURGE_BATCH: usize = 1_000;

/// How long a refresh record or an API key outlives its expiry
/// ([`EXPIRED_RETENTION`](super::EXPIRED_RETENTION): late reuse is still
/// recognised, recently expired keys still listed).
const REFRESH_GRACE_MS: i64 = super::EXPIRED_RETENTION.as_millis() as i64;

/// All six stores on Redis.
#[derive(Clone)]
pub struct RedisStores {
    conn: RedisConnection,
    prefix: String,
    rotate: Script,
    set_once: Script,
    set_if_exists: Script,
    rotate_app: Script,
    revoke_family: Script,
    claim_grace: Script,
    deny: Script,
    index_add: Script,
    append_revocation: Script,
    set_status: Script,
    read_revocations: Script,
    purge_revocations: Script,
    replace_password: Script,
    insert_key_unless_pending: Script,
}

impl std::fmt::Debug for RedisStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStores")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {e}"))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex32(field: &str, s: &str) -> StoreResult<[u8; 32]> {
    let bad = || StoreError::Corrupt(format!("{field} is not 32 hex bytes"));
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn int(field: &str, s: &str) -> StoreResult<i64> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{field} is not an integer")))
}

/// A stored hash: the `data` JSON and the fields written after creation.
struct Stored<T> {
    record: T,
    fields: HashMap<String, String>,
}

impl<T> Stored<T> {
    fn int(&self, field: &str) -> StoreResult<Option<i64>> {
        self.fields.get(field).map(|v| int(field, v)).transpose()
    }
}

fn untag(s: &str) -> String {
    s.replace(['{', '}'], "_")
}

impl RedisStores {
    /// Stores under `prefix` on `conn`.
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        let prefix = prefix.replace(['{', '}'], "");
        let prefix = prefix.trim_end_matches(':').to_owned();
        Self {
            conn,
            prefix,
            rotate: Script::new(ROTATE),
            set_once: Script::new(SET_ONCE),
            set_if_exists: Script::new(SET_IF_EXISTS),
            rotate_app: Script::new(ROTATE_APP),
            revoke_family: Script::new(REVOKE_FAMILY),
            claim_grace: Script::new(CLAIM_GRACE),
            deny: Script::new(DENY),
            index_add: Script::new(INDEX_ADD),
            append_revocation: Script::new(APPEND_REVOCATION),
            set_status: Script::new(SET_STATUS),
            read_revocations: Script::new(READ_REVOCATIONS),
            purge_revocations: Script::new(PURGE_REVOCATIONS),
            replace_password: Script::new(REPLACE_PASSWORD),
            insert_key_unless_pending: Script::new(INSERT_KEY_UNLESS_PENDING),
        }
    }

    /// A key of the revocation log (all on the `{rev}` Cluster slot).
    fn revocation_key(&self, part: &str) -> String {
        format!("{}:{{rev}}:{part}", self.prefix)
    }

    /// Appends one entry to the revocation log; returns its sequence.
    async fn log_revocation(
        &self,
        kind: RevokedKind,
        subject: &str,
        expires_at: i64,
    ) -> StoreResult<i64> {
        self.log_revocations(kind, &[subject], expires_at).await
    }

    /// Appends one entry per subject, all of one kind and expiry, in one
    /// script call (all or none); returns the last entry's sequence.
    async fn log_revocations(
        &self,
        kind: RevokedKind,
        subjects: &[&str],
        expires_at: i64,
    ) -> StoreResult<i64> {
        let mut inv = self.append_revocation.prepare_invoke();
        inv.key(self.revocation_key("seq"))
            .key(self.revocation_key("log"))
            .key(self.revocation_key("exp"));
        for subject in subjects {
            inv.arg(kind.tag()).arg(expires_at).arg(*subject);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(err)
    }

    /// Revokes one session: see [`Self::revoke_logged`].
    async fn revoke_one_session(&self, id: &str, now: i64) -> StoreResult<bool> {
        self.revoke_logged("sess", RevokedKind::Session, id, now)
            .await
    }

    /// Revokes the record `kind:id` (a session or an API key): its log
    /// entry first (a failure after it leaves the record refused), then
    /// `revoked_at`; true when this call revoked it. An absent or already
    /// revoked record is not logged.
    async fn revoke_logged(
        &self,
        kind: &str,
        logged_as: RevokedKind,
        id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let key = self.key(kind, id);
        if !self.revocable(&key).await? {
            return Ok(false);
        }
        self.log_revocation(logged_as, id, session_entry_expiry(now))
            .await?;
        Ok(self
            .set_once(std::slice::from_ref(&key), "revoked_at", now)
            .await?
            == 1)
    }

    /// Whether the record `key` exists and is not revoked yet.
    async fn revocable(&self, key: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let (exists, revoked): (bool, bool) = redis::pipe()
            .exists(key)
            .hexists(key, "revoked_at")
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(exists && !revoked)
    }

    /// Sets the `disabled` flag of the record `kind:id` (a user or an
    /// app) and logs the change as `logged_as`: the log entry first (the
    /// log and the record live on different Cluster slots), so a failure
    /// after it leaves the record refused (disable) or checked against the
    /// record (enable); false, and nothing logged, when it is absent. The
    /// record takes the change only if no later log entry's change reached
    /// it first ([`SET_STATUS`]), so the record and the log end alike.
    async fn set_disabled_logged(
        &self,
        kind: &str,
        logged_as: RevokedKind,
        id: &str,
        disabled: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let key = self.key(kind, id);
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(&key).await.map_err(err)?;
        if !exists {
            return Ok(false);
        }
        let seq = self
            .log_revocation(logged_as, id, session_entry_expiry(now))
            .await?;
        let n: i64 = self
            .set_status
            .key(&key)
            .arg(seq)
            .arg(if disabled { "1" } else { "0" })
            .arg(now)
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    /// Adds `member` to the index set `key`, which then lives at least until
    /// `expire_at_ms` (`None`: as long as the set, for a member that never
    /// expires).
    async fn index_add(
        &self,
        key: &str,
        member: &str,
        expire_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .index_add
            .key(key)
            .arg(member)
            .arg(expire_at_ms.unwrap_or(0))
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// The sorted set of lower-cased usernames (score 0: ordered by name).
    fn users_index(&self) -> String {
        format!("{}:unames", self.prefix)
    }

    fn refresh_key(&self, family: &str, hash: &[u8; 32]) -> String {
        format!("{}:rt:{{{}}}:{}", self.prefix, untag(family), hex(hash))
    }

    fn family_key(&self, family: &str) -> String {
        format!("{}:rtf:{{{}}}", self.prefix, untag(family))
    }

    async fn load<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<Stored<T>>> {
        let mut conn = self.conn.clone();
        let mut fields: HashMap<String, String> = conn.hgetall(key).await.map_err(err)?;
        let Some(data) = fields.remove("data") else {
            return Ok(None);
        };
        let record =
            serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
        Ok(Some(Stored { record, fields }))
    }

    async fn set_if_exists(&self, key: &str, pairs: &[(&str, String)]) -> StoreResult<bool> {
        let mut inv = self.set_if_exists.prepare_invoke();
        inv.key(key);
        for (f, v) in pairs {
            inv.arg(*f).arg(v);
        }
        let mut conn = self.conn.clone();
        let n: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(n == 1)
    }

    async fn set_once(&self, keys: &[String], field: &str, value: i64) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut inv = self.set_once.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(field).arg(value);
        let mut conn = self.conn.clone();
        let n: u64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(n)
    }

    async fn create(
        &self,
        key: &str,
        data: String,
        expire_at_ms: Option<i64>,
    ) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let created: bool = conn.hset_nx(key, "data", data).await.map_err(err)?;
        if created && let Some(at) = expire_at_ms {
            let _: () = redis::cmd("PEXPIREAT")
                .arg(key)
                .arg(at)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
        }
        Ok(created)
    }
}

fn list_of(field: &'static str, text: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt(format!("{field} is not a JSON list")))
}

fn user_of(s: Stored<User>) -> StoreResult<User> {
    let mut u = s.record;
    if let Some(h) = s.fields.get("password_hash") {
        u.password_hash = h.clone();
    }
    if let Some(d) = s.fields.get("disabled") {
        u.disabled = d == "1";
    }
    if let Some(t) = s.fields.get("updated_at") {
        u.updated_at = int("updated_at", t)?;
    }
    if let Some(r) = s.fields.get("roles") {
        u.roles = list_of("roles", r)?;
    }
    if let Some(p) = s.fields.get("permissions") {
        u.permissions = list_of("permissions", p)?;
    }
    Ok(u)
}

impl UserStore for RedisStores {
    fn insert_user<'a>(&'a self, user: &'a User) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let name_key = self.key("uname", &user.username.to_lowercase());
            let claimed: bool = redis::cmd("SET")
                .arg(&name_key)
                .arg(&user.id)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(err)?
                .is_some();
            if !claimed {
                return Err(StoreError::Conflict("username"));
            }
            if !self
                .create(&self.key("user", &user.id), json(user)?, None)
                .await?
            {
                let _: () = conn.del(&name_key).await.map_err(err)?;
                return Err(StoreError::Conflict("user id"));
            }
            // The username index `list_users` pages through.
            let _: () = conn
                .zadd(self.users_index(), user.username.to_lowercase(), 0)
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn user_by_username<'a>(
        &'a self,
        username: &'a Username,
    ) -> BoxFuture<'a, StoreResult<Option<User>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let id: Option<String> = conn
                .get(self.key("uname", username.key()))
                .await
                .map_err(err)?;
            match id {
                Some(id) => self.user_by_id(&id).await,
                None => Ok(None),
            }
        })
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<User>>> {
        Box::pin(async move {
            self.load::<User>(&self.key("user", id))
                .await?
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
            self.set_if_exists(
                &self.key("user", id),
                &[
                    ("password_hash", hash.to_owned()),
                    ("updated_at", now.to_string()),
                ],
            )
            .await
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
            let mut conn = self.conn.clone();
            let n: i64 = self
                .replace_password
                .key(self.key("user", id))
                .arg(expected)
                .arg(hash)
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn set_user_disabled<'a>(
        &'a self,
        id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.set_disabled_logged(
            "user",
            RevokedKind::user_status(disabled),
            id,
            disabled,
            now,
        ))
    }

    fn set_user_grants<'a>(
        &'a self,
        id: &'a str,
        roles: &'a [String],
        permissions: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            self.set_if_exists(
                &self.key("user", id),
                &[
                    ("roles", json(&roles)?),
                    ("permissions", json(&permissions)?),
                    ("updated_at", now.to_string()),
                ],
            )
            .await
        })
    }

    fn list_users<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<User>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // Lexicographic range over the username index: from the cursor
            // (exclusive) or the prefix (inclusive) to the prefix's end.
            let min = match after {
                Some(a) if a >= prefix => format!("({a}"),
                _ => format!("[{prefix}"),
            };
            let max = if prefix.is_empty() {
                "+".to_owned()
            } else {
                format!("[{prefix}\u{10FFFF}")
            };
            let names: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.users_index())
                .arg(min)
                .arg(max)
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let mut users = Vec::with_capacity(names.len());
            for name in names {
                let id: Option<String> = conn.get(self.key("uname", &name)).await.map_err(err)?;
                if let Some(id) = id
                    && let Some(user) = self.user_by_id(&id).await?
                {
                    users.push(user);
                }
            }
            Ok(users)
        })
    }

    fn delete_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let Some(user) = self.user_by_id(id).await? else {
                return Ok(false);
            };
            let mut conn = self.conn.clone();
            let name = user.username.to_lowercase();
            let removed: u64 = conn.del(self.key("user", id)).await.map_err(err)?;
            let _: () = conn.del(self.key("uname", &name)).await.map_err(err)?;
            let _: () = conn.zrem(self.users_index(), &name).await.map_err(err)?;
            Ok(removed == 1)
        })
    }

    fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
        Some(self)
    }
}

fn session_of(s: Stored<Session>) -> StoreResult<Session> {
    let revoked_at = s.int("revoked_at")?;
    let last_seen_at = s.int("last_seen_at")?;
    Ok(Session {
        revoked_at: revoked_at.or(s.record.revoked_at),
        last_seen_at: last_seen_at.unwrap_or(s.record.last_seen_at),
        ..s.record
    })
}

impl SessionStore for RedisStores {
    fn insert_session<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let expire = session.expires_at.saturating_mul(1000);
            if !self
                .create(&self.key("sess", &session.id), json(session)?, Some(expire))
                .await?
            {
                return Err(StoreError::Conflict("session"));
            }
            self.index_add(
                &self.key("usess", &session.user_id),
                &session.id,
                Some(expire),
            )
            .await
        })
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Session>>> {
        Box::pin(async move {
            self.load::<Session>(&self.key("sess", id))
                .await?
                .map(session_of)
                .transpose()
        })
    }

    fn sessions_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, StoreResult<Vec<Session>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let index = self.key("usess", user_id);
            let ids: Vec<String> = conn.smembers(&index).await.map_err(err)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match self.load::<Session>(&self.key("sess", &id)).await? {
                    Some(s) => out.push(session_of(s)?),
                    // Expired away: drop it from the index.
                    None => {
                        let _: () = conn.srem(&index, &id).await.map_err(err)?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a str,
        now: i64,
        stale_before: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let key = self.key("sess", id);
            let Some(s) = self.load::<Session>(&key).await? else {
                return Ok(false);
            };
            let last_seen = s.int("last_seen_at")?.unwrap_or(s.record.last_seen_at);
            if s.fields.contains_key("revoked_at") || last_seen > stale_before {
                return Ok(false);
            }
            self.set_if_exists(&key, &[("last_seen_at", now.to_string())])
                .await
        })
    }

    fn revoke_session<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.revoke_one_session(id, now))
    }

    fn revoke_sessions_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ids: Vec<String> = conn
                .smembers(self.key("usess", user_id))
                .await
                .map_err(err)?;
            // Session keys live on different Cluster slots: each is read
            // and marked on its own, but the log takes every entry of a
            // batch in one call, so a failure midway never leaves a session
            // marked revoked without its entry.
            let mut revocable = Vec::with_capacity(ids.len());
            for id in &ids {
                if self.revocable(&self.key("sess", id)).await? {
                    revocable.push(id.as_str());
                }
            }
            let mut n = 0;
            for batch in revocable.chunks(APPEND_BATCH) {
                self.log_revocations(RevokedKind::Session, batch, session_entry_expiry(now))
                    .await?;
                for id in batch {
                    n += self
                        .set_once(&[self.key("sess", id)], "revoked_at", now)
                        .await?;
                }
            }
            Ok(n)
        })
    }

    fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
        Some(self)
    }

    fn purge_expired_sessions(&self, _now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        // Session keys expire at the session's expiry, and the per-user
        // index with its longest-lived session (stale members are dropped
        // when the index is read).
        Box::pin(std::future::ready(Ok(0)))
    }
}

fn refresh_of(s: Stored<RefreshRecord>) -> StoreResult<RefreshRecord> {
    let successor = s
        .fields
        .get("successor")
        .map(|h| unhex32("successor", h))
        .transpose()?
        .or(s.record.successor);
    // Fields written after creation win over the creation-time record.
    Ok(RefreshRecord {
        rotated_at: s.int("rotated_at")?.or(s.record.rotated_at),
        revoked_at: s.int("revoked_at")?.or(s.record.revoked_at),
        successor,
        ..s.record
    })
}

impl RefreshStore for RedisStores {
    fn insert_refresh<'a>(&'a self, record: &'a RefreshRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let expire = record
                .expires_at
                .saturating_mul(1000)
                .saturating_add(REFRESH_GRACE_MS);
            let key = self.refresh_key(&record.family, &record.hash);
            if !self.create(&key, json(record)?, Some(expire)).await? {
                return Err(StoreError::Conflict("refresh token"));
            }
            let mut conn = self.conn.clone();
            // The scripts read the state fields, not the JSON: a record
            // stored already rotated or revoked carries them as fields too.
            let mut state: Vec<(&str, String)> = Vec::new();
            if let Some(at) = record.rotated_at {
                state.push(("rotated_at", at.to_string()));
            }
            if let Some(h) = &record.successor {
                state.push(("successor", hex(h)));
            }
            if let Some(at) = record.revoked_at {
                state.push(("revoked_at", at.to_string()));
            }
            if !state.is_empty() {
                let _: () = conn.hset_multiple(&key, &state).await.map_err(err)?;
            }
            let family = self.family_key(&record.family);
            let _: () = redis::pipe()
                .sadd(&family, hex(&record.hash))
                .ignore()
                .cmd("PEXPIREAT")
                .arg(&family)
                .arg(expire)
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let _: () = redis::cmd("SET")
                .arg(self.key("rth", &hex(&record.hash)))
                .arg(&record.family)
                .arg("PXAT")
                .arg(expire)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            self.index_add(
                &self.key("ufam", &record.user_id),
                &record.family,
                Some(expire),
            )
            .await
        })
    }

    fn refresh_by_hash<'a>(
        &'a self,
        hash: &'a [u8; 32],
    ) -> BoxFuture<'a, StoreResult<Option<RefreshRecord>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let family: Option<String> =
                conn.get(self.key("rth", &hex(hash))).await.map_err(err)?;
            let Some(family) = family else {
                return Ok(None);
            };
            self.load::<RefreshRecord>(&self.refresh_key(&family, hash))
                .await?
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
            let expire = successor
                .expires_at
                .saturating_mul(1000)
                .saturating_add(REFRESH_GRACE_MS);
            let mut conn = self.conn.clone();
            // The successor's lookup key is written first: it lives on
            // another Cluster slot than the family, so it cannot be in the
            // script, and written after it a timeout in between would spend
            // the old token with no findable successor (the client's retry
            // would then be taken for a reuse). Written first, a failure
            // leaves the old token unspent. A lost race leaves the key in
            // place: with successors minted by `Stores::successor_token`
            // every racer writes the winner's very key, so deleting it would
            // lose the winner's successor; otherwise it points at nothing
            // and expires with the token.
            let lookup = self.key("rth", &hex(&successor.hash));
            let _: () = redis::cmd("SET")
                .arg(&lookup)
                .arg(&successor.family)
                .arg("PXAT")
                .arg(expire)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let won: i64 = self
                .rotate
                .key(self.refresh_key(&successor.family, old))
                .key(self.refresh_key(&successor.family, &successor.hash))
                .key(self.family_key(&successor.family))
                .arg(now)
                .arg(hex(&successor.hash))
                .arg(json(successor)?)
                .arg(expire)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            if won != 1 {
                return Ok(false);
            }
            // The user's family index lives as long as the newest token;
            // not on the rotation's critical path (a disabled user's
            // rotation is refused by the facade whatever the index says).
            let this = self.clone();
            let (user, family) = (successor.user_id.clone(), successor.family.clone());
            tokio::spawn(async move {
                if let Err(e) = this
                    .index_add(&this.key("ufam", &user), &family, Some(expire))
                    .await
                {
                    tracing::warn!(error = %e, "refresh family index update failed");
                }
            });
            Ok(true)
        })
    }

    fn revoke_family<'a>(&'a self, family: &'a str, now: i64) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move { self.revoke_family_now(family, now).await })
    }

    fn revoke_families_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let index = self.key("ufam", user_id);
            let families: Vec<String> = conn.smembers(&index).await.map_err(err)?;
            let mut n = 0;
            // One script per family: families live on different Cluster slots.
            for family in families {
                n += self.revoke_family_now(&family, now).await?;
            }
            Ok(n)
        })
    }

    fn purge_expired_refresh(&self, _before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        // Records, family sets, lookup keys and user indexes expire a day
        // after their newest token (PXAT / PEXPIREAT).
        Box::pin(std::future::ready(Ok(0)))
    }

    fn claim_reuse_grace<'a>(
        &'a self,
        family: &'a str,
        hash: &'a [u8; 32],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = self
                .claim_grace
                .key(self.refresh_key(family, hash))
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(n == 1)
        })
    }
}

impl RedisStores {
    async fn revoke_family_now(&self, family: &str, now: i64) -> StoreResult<u64> {
        let mut conn = self.conn.clone();
        self.revoke_family
            .key(self.family_key(family))
            .arg(format!("{}:rt:{{{}}}:", self.prefix, untag(family)))
            .arg(now)
            .invoke_async(&mut conn)
            .await
            .map_err(err)
    }
}

impl Denylist for RedisStores {
    fn deny<'a>(&'a self, jti: &'a str, expires_at: i64) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            // The log entry first: a failure after it leaves the token
            // refused by every replica's set.
            self.log_revocation(RevokedKind::Jti, jti, expires_at)
                .await?;
            let mut conn = self.conn.clone();
            let _: i64 = self
                .deny
                .key(self.key("jti", jti))
                .arg(expires_at.saturating_mul(1000))
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn is_denied<'a>(&'a self, jti: &'a str, _now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = conn.exists(self.key("jti", jti)).await.map_err(err)?;
            Ok(n == 1)
        })
    }

    fn purge_expired(&self, _now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        // Redis expires the entries itself (PXAT).
        Box::pin(std::future::ready(Ok(0)))
    }

    fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
        Some(self)
    }
}

/// One log member, `seq:kind:expires_at:subject`, at sequence `seq` (its
/// score). A member that does not parse is [`RevokedKind::Unrecognized`]
/// (tag 0): the set skips and counts it instead of stopping the feed.
fn logged_revocation(seq: u64, member: String) -> LoggedRevocation {
    let parsed = (|| {
        let mut parts = member.splitn(4, ':');
        let _seq = parts.next()?;
        let kind = RevokedKind::from_tag(parts.next()?.parse::<i64>().ok()?);
        let expires_at = parts.next()?.parse::<i64>().ok()?;
        let subject = parts.next()?.to_owned();
        Some((kind, expires_at, subject))
    })();
    match parsed {
        Some((kind, expires_at, subject)) => LoggedRevocation {
            seq,
            kind,
            subject,
            expires_at,
        },
        None => LoggedRevocation {
            seq,
            kind: RevokedKind::Unrecognized(0),
            subject: member,
            expires_at: 0,
        },
    }
}

impl RevocationLog for RedisStores {
    fn revocations_after(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RevocationPage>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let reply: Vec<String> = self
                .read_revocations
                .key(self.revocation_key("seq"))
                .key(self.revocation_key("log"))
                .arg(after)
                .arg(limit)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            let mut reply = reply.into_iter();
            let head = reply
                .next()
                .ok_or_else(|| StoreError::Corrupt("revocation log head missing".into()))?
                .parse::<u64>()
                .map_err(|_| StoreError::Corrupt("revocation log head".into()))?;
            // Expired entries not purged yet are returned too (they move a
            // follower's cursor past them; the set drops them): filtering
            // them here could stall a follower on a page of expired ones.
            let _ = now;
            let mut entries = Vec::with_capacity(reply.len() / 2);
            while let (Some(member), Some(score)) = (reply.next(), reply.next()) {
                // Lua hands a score over as text: an integer, or an
                // exponent form past 17 digits.
                let seq = score
                    .parse::<u64>()
                    .ok()
                    .or_else(|| {
                        let f = score.parse::<f64>().ok()?;
                        (f.is_finite() && f >= 0.0).then_some(f as u64)
                    })
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("revocation log score {score:?}"))
                    })?;
                entries.push(logged_revocation(seq, member));
            }
            Ok(RevocationPage { entries, head })
        })
    }

    fn purge_revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let mut total = 0u64;
            loop {
                let mut conn = self.conn.clone();
                let n: u64 = self
                    .purge_revocations
                    .key(self.revocation_key("log"))
                    .key(self.revocation_key("exp"))
                    .arg(now)
                    .arg(PURGE_BATCH)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(err)?;
                total += n;
                if n < PURGE_BATCH as u64 {
                    return Ok(total);
                }
            }
        })
    }
}

fn api_key_of(s: Stored<ApiKeyRecord>) -> StoreResult<ApiKeyRecord> {
    // Fields written after creation win over the creation-time record.
    Ok(ApiKeyRecord {
        revoked_at: s.int("revoked_at")?.or(s.record.revoked_at),
        last_used_at: s.int("last_used_at")?.or(s.record.last_used_at),
        ..s.record
    })
}

impl ApiKeyStore for RedisStores {
    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            // An expiring key is deleted a day after its expiry; the owner's
            // index lives as long as its longest-lived key.
            let expire = key
                .expires_at
                .map(|e| e.saturating_mul(1000).saturating_add(REFRESH_GRACE_MS));
            if !self
                .create(&self.key("ak", &key.id), json(key)?, expire)
                .await?
            {
                return Err(StoreError::Conflict("API key"));
            }
            self.index_add(&self.key("ako", &key.owner), &key.id, expire)
                .await
        })
    }

    fn api_key<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<std::sync::Arc<ApiKeyRecord>>>> {
        Box::pin(async move {
            Ok(self
                .load::<ApiKeyRecord>(&self.key("ak", id))
                .await?
                .map(api_key_of)
                .transpose()?
                .map(std::sync::Arc::new))
        })
    }

    fn api_keys_of<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, StoreResult<Vec<ApiKeyRecord>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let index = self.key("ako", owner);
            let ids: Vec<String> = conn.smembers(&index).await.map_err(err)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match self.load::<ApiKeyRecord>(&self.key("ak", &id)).await? {
                    Some(k) => out.push(api_key_of(k)?),
                    // Expired away: drop it from the index.
                    None => {
                        let _: () = conn.srem(&index, &id).await.map_err(err)?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn revoke_api_key<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.revoke_logged("ak", RevokedKind::ApiKey, id, now))
    }

    fn touch_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.set_if_exists(&self.key("ak", id), &[("last_used_at", at.to_string())])
                .await?;
            Ok(())
        })
    }

    fn purge_expired_api_keys(&self, _before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        // Expiring keys carry a TTL (a day after expiry).
        Box::pin(std::future::ready(Ok(0)))
    }

    fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
        Some(self)
    }
}

fn app_of(s: Stored<AppRecord>) -> StoreResult<AppRecord> {
    let secret_version = s.int("secret_version")?;
    let previous_valid_until = s.int("previous_valid_until")?;
    let updated_at = s.int("updated_at")?;
    let Stored {
        record: mut a,
        fields,
    } = s;
    if let Some(h) = fields.get("secret_hash") {
        a.secret_hash = unhex32("secret_hash", h)?;
    }
    if let Some(v) = secret_version {
        a.secret_version = u32::try_from(v)
            .map_err(|_| StoreError::Corrupt("secret_version out of range".into()))?;
    }
    if let Some(h) = fields.get("previous_hash") {
        a.previous_hash = Some(unhex32("previous_hash", h)?);
    }
    if previous_valid_until.is_some() {
        a.previous_valid_until = previous_valid_until;
    }
    if let Some(d) = fields.get("disabled") {
        a.disabled = d == "1";
    }
    if let Some(v) = updated_at {
        a.updated_at = v;
    }
    Ok(a)
}

impl AppStore for RedisStores {
    fn insert_app<'a>(&'a self, app: &'a AppRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let key = self.key("app", &app.app_id);
            if !self.create(&key, json(app)?, None).await? {
                return Err(StoreError::Conflict("app"));
            }
            // The secret lives in a field of its own so rotation can swap it.
            let mut conn = self.conn.clone();
            let _: () = conn
                .hset(&key, "secret_hash", hex(&app.secret_hash))
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn app<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, StoreResult<Option<AppRecord>>> {
        Box::pin(async move {
            self.load::<AppRecord>(&self.key("app", app_id))
                .await?
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
            let mut conn = self.conn.clone();
            let version: i64 = self
                .rotate_app
                .key(self.key("app", app_id))
                .arg(previous_valid_until)
                .arg(hex(new_hash))
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            if version == 0 {
                return Ok(None);
            }
            u32::try_from(version)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("secret_version out of range".into()))
        })
    }

    fn set_app_disabled<'a>(
        &'a self,
        app_id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.set_disabled_logged(
            "app",
            RevokedKind::app_status(disabled),
            app_id,
            disabled,
            now,
        ))
    }

    fn revocation_log(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl SigningKeyStore for RedisStores {
    fn insert_signing_key<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let created: bool = conn
                .hset_nx(
                    format!("{}:signing_keys", self.prefix),
                    &key.kid,
                    json(key)?,
                )
                .await
                .map_err(err)?;
            if created {
                Ok(())
            } else {
                Err(StoreError::Conflict("signing key"))
            }
        })
    }

    fn insert_signing_key_unless_pending<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<PendingKey>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // One script: the check and the insert run as one step.
            let answer: Vec<String> = self
                .insert_key_unless_pending
                .key(format!("{}:signing_keys", self.prefix))
                .arg(now)
                .arg(&key.kid)
                .arg(json(key)?)
                .invoke_async(&mut conn)
                .await
                .map_err(err)?;
            match answer.as_slice() {
                [] => Ok(None),
                [kid, at] => {
                    let activates_at = int("activates_at", at)?;
                    if activates_at < 0 {
                        Err(StoreError::Conflict("signing key"))
                    } else {
                        Ok(Some(PendingKey {
                            kid: kid.clone(),
                            activates_at,
                        }))
                    }
                }
                _ => Err(StoreError::Corrupt(
                    "unexpected answer to the signing-key claim".into(),
                )),
            }
        })
    }

    fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let all: HashMap<String, String> = conn
                .hgetall(format!("{}:signing_keys", self.prefix))
                .await
                .map_err(err)?;
            all.into_iter()
                .map(|(kid, data)| {
                    serde_json::from_str::<SigningKeyRecord>(&data)
                        .ok()
                        .filter(|r| r.kid == kid)
                        .ok_or_else(|| StoreError::Corrupt(format!("signing key `{kid}`")))
                })
                .collect()
        })
    }

    fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = conn
                .hdel(format!("{}:signing_keys", self.prefix), kid)
                .await
                .map_err(err)?;
            Ok(n == 1)
        })
    }
}

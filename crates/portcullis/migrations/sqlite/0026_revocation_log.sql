-- The revocation log every replica follows (issue 26): one row per revoked
-- `jti` or session, appended in the transaction that revokes it, kept until
-- `expires_at` (the latest expiry of a token it refuses). `seq` orders it
-- (SQLite has one writer at a time: sequence order is commit order).
CREATE TABLE IF NOT EXISTS revocation_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       INTEGER NOT NULL,
    subject    TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revocation_log_expires_at ON revocation_log (expires_at);

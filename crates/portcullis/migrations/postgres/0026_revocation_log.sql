-- The revocation log every replica follows (issue 26): one row per revoked
-- `jti` or session, appended in the transaction that revokes it, kept until
-- `expires_at` (the latest expiry of a token it refuses). `seq` orders it;
-- appends take a transaction-scoped advisory lock, so sequence order is
-- commit order and a follower never skips a row that commits late.
CREATE TABLE IF NOT EXISTS revocation_log (
    seq        BIGSERIAL PRIMARY KEY,
    kind       BIGINT NOT NULL,
    subject    TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocation_log_expires_at ON revocation_log (expires_at);

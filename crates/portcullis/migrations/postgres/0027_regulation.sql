-- Login regulation shared by every replica on PostgreSQL when no Redis is
-- configured (issue 25): one row per regulated key (`login:ip:<ip>`,
-- `login:acct:<ip>:<account>`, `console:…`), the state of
-- `portcullis_core::regulation::FailureRecord` in Unix milliseconds on the
-- database's clock. An attempt locks its row for its transaction, so N
-- concurrent attempts against a limit of N admit exactly N over all
-- replicas. Rows past `expires_at` (the end of their window or ban) hold
-- nothing and are purged.
CREATE TABLE IF NOT EXISTS regulation (
    key          TEXT PRIMARY KEY,
    count        BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS regulation_expires_at ON regulation (expires_at);

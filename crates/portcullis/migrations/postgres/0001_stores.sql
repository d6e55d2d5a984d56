-- Stores: users, sessions, refresh-token families, denylist, API keys, apps.
-- Timestamps are Unix seconds; secrets are stored only as hashes.
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles         TEXT NOT NULL,
    permissions   TEXT NOT NULL,
    tenant        TEXT,
    disabled      BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    user_agent   TEXT,
    client_ip    TEXT,
    remember_me  BOOLEAN NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash        BYTEA PRIMARY KEY,
    family      TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    session_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    remember_me BOOLEAN NOT NULL,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    successor   BYTEA,
    revoked_at  BIGINT
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE IF NOT EXISTS denylist (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS denylist_expires_at ON denylist (expires_at);

CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    hash         BYTEA NOT NULL,
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    roles        TEXT NOT NULL,
    permissions  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys (owner);

CREATE TABLE IF NOT EXISTS apps (
    app_id               TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    secret_hash          BYTEA NOT NULL,
    secret_version       BIGINT NOT NULL,
    previous_hash        BYTEA,
    previous_valid_until BIGINT,
    services             TEXT NOT NULL,
    permissions          TEXT NOT NULL,
    tenant               TEXT,
    disabled             BOOLEAN NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

-- Signing keys rotated in through the admin API: the private key sealed
-- (AES-256-GCM under a key derived from the pepper), and its schedule.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    sealed       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    activates_at INTEGER NOT NULL
);

-- Refresh-token lifecycle: the reuse window hands a rotated token's
-- successor back at most once (grace_claimed_at), disabling a user revokes
-- its families (by user_id), and the periodic purge deletes expired rows
-- through indexes on their expiry.
ALTER TABLE refresh_tokens ADD COLUMN grace_claimed_at BIGINT;
CREATE INDEX IF NOT EXISTS refresh_tokens_user_id ON refresh_tokens (user_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
CREATE INDEX IF NOT EXISTS api_keys_expires_at ON api_keys (expires_at);

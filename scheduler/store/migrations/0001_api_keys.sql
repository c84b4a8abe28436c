-- API keys: each bound to a tenant. Only a SHA-256 of the key is stored; the key itself is
-- shown once, when it is created.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,                  -- "key_<16 hex>": safe to log and show
    tenant      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,             -- sha256(key), 32 bytes
    key_prefix  text NOT NULL,                     -- first characters, to recognise a key
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- Files, batches, async requests and webhooks. Everything is scoped by tenant; ids are
-- prefixed random hex ("file-", "batch_", "areq_", "we_", "msg_") and safe to log.

-- Uploaded and generated files. Content is kept in ~1 MiB chunks (file_chunks), written while
-- the upload streams in and read back one chunk at a time: a file is never held whole in memory.
CREATE TABLE files (
    id          text PRIMARY KEY,
    tenant      text NOT NULL,
    purpose     text NOT NULL,                 -- batch | batch_output
    filename    text NOT NULL,
    bytes       bigint NOT NULL DEFAULT 0,
    lines       integer NOT NULL DEFAULT 0,
    status      text NOT NULL,                 -- uploading | processed
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_tenant ON files (tenant, created_at DESC, id DESC);

CREATE TABLE file_chunks (
    file_id  text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);

-- One row per batch, in OpenAI's terms. `dispatched` is the dispatch cursor: items with
-- idx < dispatched have been published (in idx order). `sealed`: no more results are stored
-- (finalizing, or cancelled/expired and being written out).
CREATE TABLE batches (
    id                 text PRIMARY KEY,
    tenant             text NOT NULL,
    endpoint           text NOT NULL,
    input_file_id      text NOT NULL,
    completion_window  text NOT NULL,
    status             text NOT NULL,
    model              text,
    metadata           jsonb,
    errors             jsonb,                  -- [{code, message, param, line}] when failed
    output_file_id     text,
    error_file_id      text,
    total              integer NOT NULL DEFAULT 0,
    dispatched         integer NOT NULL DEFAULT 0,
    completed          integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0,
    sealed             boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    in_progress_at     timestamptz,
    finalizing_at      timestamptz,
    completed_at       timestamptz,
    failed_at          timestamptz,
    expired_at         timestamptz,
    cancelling_at      timestamptz,
    cancelled_at       timestamptz
);
CREATE INDEX batches_tenant ON batches (tenant, created_at DESC, id DESC);
CREATE INDEX batches_active ON batches (status)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- The validated requests of a batch: `request` is the encoded InferenceRequest whose id is
-- "<batch id>-<idx>" (also its JetStream de-duplication id).
CREATE TABLE batch_items (
    batch_id   text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx        integer NOT NULL,
    custom_id  text NOT NULL,
    request    bytea NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- One result per item, stored once (INSERT ... ON CONFLICT DO NOTHING): a redelivered item's
-- second result is dropped. `reply` is the worker's FinalResult/ErrorResult as sent (JSON).
CREATE TABLE batch_results (
    batch_id     text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx          integer NOT NULL,
    ok           boolean NOT NULL,
    reply        bytea NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, idx)
);

-- Async single requests (HTTP 202 + poll, or NATS with a callback).
CREATE TABLE async_requests (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    endpoint      text NOT NULL,              -- /v1/chat/completions, ... ("nats" over NATS)
    model         text NOT NULL,
    request       bytea NOT NULL,             -- the encoded InferenceRequest
    status        text NOT NULL,              -- queued | in_progress | completed | failed
    callback_url  text,
    ok            boolean,
    reply         bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    completed_at  timestamptz,
    expires_at    timestamptz                 -- the result is deleted after this
);
CREATE INDEX async_requests_queued ON async_requests (created_at) WHERE status = 'queued';
CREATE INDEX async_requests_expiry ON async_requests (expires_at) WHERE expires_at IS NOT NULL;

-- Webhook endpoints, registered per tenant, each with its own Standard Webhooks secret.
CREATE TABLE webhook_endpoints (
    id          text PRIMARY KEY,
    tenant      text NOT NULL,
    url         text NOT NULL,
    secret      text NOT NULL,                -- whsec_<base64>
    events      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant);

-- The outbox: one row per (event, endpoint), written in the same transaction as the state
-- change that caused it; delivered with retries until acknowledged (2xx) or dead.
CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,        -- the webhook-id header: same on every retry
    tenant           text NOT NULL,
    endpoint_id      text REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    url              text NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,
    state            text NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

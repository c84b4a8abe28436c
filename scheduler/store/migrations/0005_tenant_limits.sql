-- Tenant limits (schemas/limits.py): one row per tenant and model, model '*' for all of its
-- models (a model's own row wins). NULL: no limit.
CREATE TABLE tenant_limits (
    tenant             text NOT NULL,
    model              text NOT NULL DEFAULT '*',
    rpm                bigint,
    tpm                bigint,
    max_in_flight      bigint,
    batch_queue_lines  bigint,
    batch_queue_tokens bigint,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, model)
);

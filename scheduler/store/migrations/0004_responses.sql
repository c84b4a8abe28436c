-- Stored responses of the Responses API (POST /v1/responses with store true), per tenant.
-- `response` is the response object (JSON); `conversation` the chat messages a response
-- continuing it starts from (previous_response_id); `input_items` this request's input.
CREATE TABLE responses (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    status       text NOT NULL,
    response     bytea NOT NULL,
    conversation bytea NOT NULL,
    input_items  bytea NOT NULL,
    -- A background response's request in its model's stream (deleted there on cancel).
    stream_seq   bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX responses_expiry ON responses (expires_at);

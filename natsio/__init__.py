"""JetStream I/O shared by the producer, the workers and the scheduler.

    acks        PubAck decoding, and the one classification of a publish's answer into an
                `Outcome` (stored, no stream, full, too large, publish again, refused)
    inbox       `AckInbox`: publishes whose PubAcks arrive on one shared inbox subscription
    streams     `ensure_stream`: create or update a stream (idempotent, race-safe)
    directory   `ModelDirectory`: which models have a request stream (cached)
    connection  `connect`: the connection options every jetserve process uses

`schemas/` is the wire contract (names, messages) and does no I/O; this package does the I/O
and takes every subject, inbox and header name from `schemas.names`.
"""

-- The identity of this installation's database (one row). The scheduler writes it into the
-- metadata of the NATS consumers that feed this database (results, async submissions), and a
-- scheduler of another installation on the same NATS server refuses those consumers: with
-- the durable consumer shared, it would take results that belong here, find no row for them
-- in its own database, and ack them away.
CREATE TABLE installation (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    id         text NOT NULL DEFAULT gen_random_uuid()::text,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;

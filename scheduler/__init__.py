"""Batch jobs over time: dispatch, finalize, expire, cancel, and webhooks, on a Postgres store."""

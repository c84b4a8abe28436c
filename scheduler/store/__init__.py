"""The Postgres store: versioned migrations, the connection pool, and one module per table."""

"""Ways in: the Python client for the NATS subjects, and the HTTP bridge."""

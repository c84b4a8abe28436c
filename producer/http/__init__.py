"""The HTTP bridge: an OpenAI-compatible API in front of jetserve's NATS subjects."""

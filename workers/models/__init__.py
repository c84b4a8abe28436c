"""Models shipped with jetserve, written with the model SDK."""

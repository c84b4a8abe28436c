"""The `jetserve` command: local stack, workers, tools. Imports nothing heavy at import time."""

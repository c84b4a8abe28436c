"""The wire contract of jetserve: every message, subject and header that crosses NATS.

This package is the only one that `producer`, `workers` and `scheduler` share. It does no I/O.
Evolution rules (msgspec's): new fields get defaults; a field never changes type; a breaking
change gets a new tag (`request.v2`) decoded beside the old one.
"""

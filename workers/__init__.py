"""Workers: pull requests from JetStream at the rate they can serve them and run them.

`worker` is the process, `intake` decides how much to pull, `handler` turns one message into
a result and an acknowledgement, `sdk` is the base class for Python models, `engine/` is the
continuous-batching transformer engine.
"""

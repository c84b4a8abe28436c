"""The continuous-batching transformer engine.

One noun a module: `sequence` (engine state of one request), `scheduler` (which tokens run
this step: pure, no I/O, no torch), `kv_cache` (the cache the engine owns), `attention` (the
ragged attention the model runs with), `model_runner` (one forward pass), `sampler`,
`detokenizer`, `engine` (the step: schedule -> run -> update), `backend` (the worker adapter:
engine thread <-> asyncio), `loader` and `tiny` (models).
"""

"""Train state, per-device steps, data parallelism over a mesh, loop, checkpoints and metrics."""

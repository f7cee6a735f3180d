"""One process of the 2-process data-parallel test: 2 CPU devices here, 4 in all (run by the test)."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"


def main(process_id: int, port: int, out: str) -> None:
    import functools

    import jax
    import numpy as np

    from attn_jax.train import distributed, parallel, step
    from tests._train_models import TinyNet
    from tests.test_train_multiprocess import make_batches, make_state_and_tx

    assert distributed.maybe_initialize(f"127.0.0.1:{port}", 2, process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    model = TinyNet(bn_axis_name="data")
    batches = make_batches()
    state, tx = make_state_and_tx(model, batches[0])
    mesh = parallel.make_mesh()
    fn = parallel.shard_map_step(functools.partial(step.train_step, model=model, tx=tx), mesh)
    state = parallel.replicate(state, mesh)
    half = len(batches[0]["label"]) // 2
    for batch in batches:  # each process feeds its own half of the global batch
        local = {k: v[process_id * half : (process_id + 1) * half] for k, v in batch.items()}
        state, metrics = fn(state, parallel.shard_batch(local, mesh))
    replicated = (state.params, state.batch_stats, metrics)
    host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), replicated)
    from attn_jax.train.loop import any_process

    # a SIGTERM seen by one process only stops both (train loop's preemption agreement)
    agreed = [any_process(process_id == 1), any_process(False), any_process(True)]
    assert agreed == [True, False, True], agreed
    if process_id == 0:
        leaves = jax.tree.leaves(host)
        np.savez(out, *leaves)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

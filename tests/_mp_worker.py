"""One process of the 2-process data-parallel test: 2 CPU devices here, 4 in all (run by the test).

For every task, trains its tiny model on synthetic batches with this process feeding its half of each
global batch, and saves the final parameters, batch statistics and metrics (process 0)."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"


def main(process_id: int, port: int, out: str) -> None:
    import jax
    import numpy as np

    from attn_jax.train import distributed, parallel
    from attn_jax.train.runner import build_steps
    from tests._train_models import TASKS, small_config, synthetic_batches, synthetic_meta

    assert distributed.maybe_initialize(f"127.0.0.1:{port}", 2, process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = parallel.make_mesh()
    for task in TASKS:
        runner = build_steps(small_config(task, "sgd"), mesh, meta=synthetic_meta(task))
        state = runner.place(runner.init_state(3))
        batches = synthetic_batches(task, 3, seed=1)
        half = len(batches[0]["label"]) // 2
        for batch in batches:  # each process feeds its own half of the global batch
            local = {k: v[process_id * half : (process_id + 1) * half] for k, v in batch.items()}
            state, metrics = runner.train(state, runner.batch(local))
        eval_batch = dict(synthetic_batches(task, 1, seed=5)[0], valid=np.arange(16) < 13)
        local = {k: v[process_id * half : (process_id + 1) * half] for k, v in eval_batch.items()}
        evaluator = runner.task.evaluator()
        evaluator.add(*runner.eval_host(state, local))
        result = {k: np.asarray(v, np.float64) for k, v in evaluator.result().items()}
        replicated = (state.params, state.batch_stats, metrics)
        host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), replicated)
        if process_id == 0:
            np.savez(f"{out}.{task}.npz", *jax.tree.leaves(host))
            np.savez(f"{out}.{task}.eval.npz", **result)
    from attn_jax.train.loop import any_process

    # a SIGTERM seen by one process only stops both (train loop's preemption agreement)
    agreed = [any_process(process_id == 1), any_process(False), any_process(True)]
    assert agreed == [True, False, True], agreed
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])

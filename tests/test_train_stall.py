"""A late or stuck device never ends a run as "Fatal Python error".

XLA:CPU aborts the process when one device's thread reaches an all-reduce more than warn + terminate
seconds (20 + 40 by default) after the others; on a loaded 2-core machine the main job's 4-device step
did. The subprocesses below make device 0 late on purpose (a host callback that sleeps before the
all-reduce) so the failure is deterministic, not a matter of load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from attn_jax.train import distributed
from attn_jax.train.watchdog import EXIT_STALLED, StallWatchdog

# device 0 sleeps argv[1] seconds before a psum over 4 CPU devices; configure_cpu_devices(4) when
# argv[2] == "library" (the trainer's start-up), else XLA_FLAGS alone decides
_LATE_DEVICE = textwrap.dedent(
    """
    import sys, time
    import jax
    if sys.argv[2] == "library":
        from attn_jax.train.distributed import configure_cpu_devices
        configure_cpu_devices(4)
    else:
        jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp, numpy as np
    from jax.experimental import io_callback
    from jax.sharding import Mesh, PartitionSpec as P

    def nap(i):
        if int(i) == 0:
            time.sleep(float(sys.argv[1]))
        return np.int32(0)

    def f(x):
        late = io_callback(nap, jax.ShapeDtypeStruct((), jnp.int32), jax.lax.axis_index("d"))
        return jax.lax.psum(x + late, "d")

    mesh = Mesh(np.asarray(jax.devices()), ("d",))
    out = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=P()))(jnp.ones(4))
    print("psum", float(out[0]), flush=True)
    """
)


def _run_late_device(sleep_s: float, how: str, xla_flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    return subprocess.run(
        [sys.executable, "-c", _LATE_DEVICE, str(sleep_s), how],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_xla_aborts_the_process_when_a_device_is_later_than_its_collective_timeouts():
    # today's failure, scaled down: warn 1 s + terminate 2 s against a device 4 s late
    flags = f"--{distributed.COLLECTIVE_WARN_FLAG}=1 --{distributed.COLLECTIVE_TERMINATE_FLAG}=2"
    proc = _run_late_device(4, "plain", flags)
    assert proc.returncode != 0
    assert "Termination timeout" in proc.stderr
    assert "psum" not in proc.stdout


def test_configure_cpu_devices_lets_a_device_arrive_a_minute_late():
    # 61 s late: past XLA's default 20 + 40 s, which aborted the main job on a busy machine
    proc = _run_late_device(61, "library", "")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "psum 4.0" in proc.stdout
    assert "Termination timeout" not in proc.stderr


def test_collective_timeouts_are_added_to_xla_flags_unless_the_user_set_them(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    distributed.set_collective_timeouts()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_collective_call_terminate_timeout_seconds=86400",
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
    ]
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_collective_call_terminate_timeout_seconds=7")
    distributed.set_collective_timeouts()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_collective_call_terminate_timeout_seconds=7",
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
    ]


def test_watchdog_ends_a_stalled_run_with_one_line_and_status_75(capsys):
    exits = []
    dog = StallWatchdog(0.3, lambda: "last checkpoint: step 12", exit_fn=exits.append, poll_s=0.02)
    with dog:
        time.sleep(0.8)
    assert exits == [EXIT_STALLED] and dog.stalled
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("attn-jax: stalled: no training step finished in ")
    assert lines[0].endswith("exiting with status 75; last checkpoint: step 12")


def test_watchdog_is_quiet_while_beats_keep_coming(capsys):
    exits = []
    with StallWatchdog(0.4, exit_fn=exits.append, poll_s=0.02) as dog:
        for _ in range(12):  # 1.2 s in all, never 0.4 s without a beat
            time.sleep(0.1)
            dog.beat()
    assert exits == [] and not dog.stalled
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", [-1, -0.5])
def test_watchdog_rejects_a_negative_timeout(bad):
    with pytest.raises(ValueError, match=f"stall_timeout_s must be >= 0.*got {bad}"):
        StallWatchdog(bad)


# the tiny classification run, whose 5th training step never returns (as a device stuck before its
# all-reduce would): the loop's watchdog must end it with one line and EXIT_STALLED
_STALLED_RUN = textwrap.dedent(
    """
    import importlib.util, sys, time
    from attn_jax.train import loop, runner

    spec = importlib.util.spec_from_file_location("cfg", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("spatial,tiny")
    config.update(dict(
        data={"dir": sys.argv[2]}, num_train_steps=8, checkpoint_every_steps=2, log_every_steps=1,
        eval_every_steps=0, png_examples=0, progress=False, async_checkpoints=False, stall_timeout_s=20,
    ))
    init = runner.Runner.__init__

    def stalling_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        train, calls = self.train, []

        def train_or_hang(state, batch):
            calls.append(1)
            if len(calls) == 5:
                time.sleep(600)
            return train(state, batch)

        self.train = train_or_hang

    runner.Runner.__init__ = stalling_init
    loop.train_and_evaluate(config, sys.argv[3])
    print("finished", flush=True)
    """
)


def test_a_step_that_never_finishes_ends_the_run_with_status_75_and_its_checkpoints(data_dir, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, "experiments", "configs", "classification.py")
    workdir = str(tmp_path / "run")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _STALLED_RUN, config, data_dir, workdir],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert time.monotonic() - start < 300  # not the 600 s the stuck step would take
    assert proc.returncode == EXIT_STALLED, proc.stderr[-3000:]
    assert "finished" not in proc.stdout
    stalled = [line for line in proc.stderr.splitlines() if line.startswith("attn-jax: stalled:")]
    assert len(stalled) == 1, proc.stderr[-3000:]
    assert "(stall_timeout_s=20;" in stalled[0]
    assert f"verified checkpoint steps [2, 4] in {workdir}/checkpoints are kept" in stalled[0]
    assert stalled[0].endswith("; run the same command again to resume")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_a_long_evaluation_that_makes_progress_is_no_stall(data_dir, tmp_path, monkeypatch):
    """An eval of 4 batches, each over 3 s, under stall_timeout_s = 8: each batch beats the watchdog."""
    import functools

    from attn_jax.train import loop
    from attn_jax.train.runner import Runner
    from tests._train_models import load_experiment_config

    fired = []
    monkeypatch.setattr(
        loop, "StallWatchdog", functools.partial(StallWatchdog, exit_fn=fired.append, poll_s=0.05)
    )
    eval_host = Runner.eval_host

    def slow_eval_host(self, state, batch):
        time.sleep(3.0)
        return eval_host(self, state, batch)

    monkeypatch.setattr(Runner, "eval_host", slow_eval_host)
    c = load_experiment_config("classification")
    c.data.dir, c.data.eval_batch_size, c.data.eval_examples = data_dir, 16, 64
    c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps, c.schedule.warmup_steps = 2, 2, 2, 1
    c.stall_timeout_s, c.progress, c.tensorboard, c.png_examples = 8.0, False, False, 0
    summary = loop.train_and_evaluate(c, str(tmp_path))
    assert summary["stop_reason"] == "done" and fired == [], fired

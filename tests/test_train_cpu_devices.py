"""config.cpu_devices: the host CPU split into several XLA devices before JAX starts; later, a warning."""

import re
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import warnings
    import jax
    from attn_jax.train.distributed import configure_cpu_devices
    import attn_jax.train.loop  # importing the training code must not start JAX's backends
    configure_cpu_devices(3)
    assert jax.device_count() == 3, jax.devices()
    configure_cpu_devices(3)  # same count again: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_cpu_devices(2)
    assert jax.device_count() == 3
    assert len(caught) == 1 and "cpu_devices=2 ignored" in str(caught[0].message), caught
    print("ok")
    """
)


def test_cpu_devices_before_and_after_jax_starts():
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _compiled_conv_step(num_devices: int) -> str:
    """Compiled HLO of a data-parallel step (a conv, a dot and a per-channel sum, mean over the mesh) on
    `num_devices`."""
    import jax.numpy as jnp
    from jax import lax

    from attn_jax.train.parallel import make_mesh, replicate, shard_batch, shard_map_step

    def step(w, batch):
        y = lax.conv_general_dilated(
            batch["x"], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        dot = jnp.sum(y.reshape(y.shape[0], -1) @ jnp.ones((y[0].size, 8)))
        channel_sums = jnp.sum(y * y, axis=(0, 1, 2))  # BatchNorm-like statistics
        return w, lax.pmean(dot + jnp.sum(channel_sums * channel_sums), "data")

    mesh = make_mesh(num_devices)
    w = replicate(jnp.ones((3, 3, 4, 8)), mesh)
    batch = shard_batch({"x": np.ones((8, 64, 64, 4), np.float32)}, mesh)
    return shard_map_step(step, mesh).lower(w, batch).compile().as_text()


def _ynn_ops(hlo: str) -> set[str]:
    """Opcodes computed inside YNNPACK fusions of compiled HLO text."""
    called = set(re.findall(r"calls=(%[\w.-]+).*__ynn_fusion", hlo))
    ops, body = set(), False
    for line in hlo.splitlines():
        if re.match(r"^(%[\w.-]+) ", line):
            body = line.split()[0] in called
        elif body:
            ops.update(re.findall(r"= \S+ ([a-z-]+)\(", line))
    return ops


def test_one_cpu_device_sums_on_ynnpack_and_convolves_on_xla_kernels():
    one, four = _ynn_ops(_compiled_conv_step(1)), _ynn_ops(_compiled_conv_step(4))
    # one device per process: XLA's threaded convolution and product, YNNPACK's reductions
    assert "reduce" in one and not {"convolution", "dot"} & one, one
    assert {"dot", "reduce"} <= four, four  # devices side by side: YNNPACK throughout


def test_xla_flags_that_set_the_kernel_library_are_left_to_decide(monkeypatch):
    from attn_jax.train.parallel import YNN_FLAG, YNN_REDUCTIONS_ONLY, make_mesh, train_compiler_options

    assert train_compiler_options(make_mesh(1)) == {YNN_FLAG: YNN_REDUCTIONS_ONLY}
    assert train_compiler_options(make_mesh(4)) is None
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{YNN_FLAG}=individual_dot")
    assert train_compiler_options(make_mesh(1)) is None


def test_a_jaxlib_that_refuses_the_reductions_only_value_gets_no_ynnpack(monkeypatch):
    from attn_jax.train import parallel

    monkeypatch.setattr(parallel, "_ONE_DEVICE_YNN_CHOICES", ("LIBRARY_FUSION_TYPE_NOT_A_TYPE", ""))
    parallel._ynn_choice.cache_clear()
    try:
        assert parallel.train_compiler_options(parallel.make_mesh(1)) == {parallel.YNN_FLAG: ""}
        monkeypatch.setattr(parallel, "_ONE_DEVICE_YNN_CHOICES", ("LIBRARY_FUSION_TYPE_NOT_A_TYPE",))
        parallel._ynn_choice.cache_clear()
        assert parallel.train_compiler_options(parallel.make_mesh(1)) is None  # XLA's defaults
    finally:
        parallel._ynn_choice.cache_clear()

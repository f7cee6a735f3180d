"""config.cpu.devices: the host CPU split into several XLA devices before JAX starts; later, a warning."""

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


def _conv_step(w, batch):
    """A data-parallel step: a conv, a dot and a per-channel sum, mean over the axis "data"."""
    import jax.numpy as jnp
    from jax import lax

    y = lax.conv_general_dilated(batch["x"], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    dot = jnp.sum(y.reshape(y.shape[0], -1) @ jnp.ones((y[0].size, 8)))
    channel_sums = jnp.sum(y * y, axis=(0, 1, 2))  # BatchNorm-like statistics
    return w, lax.pmean(dot + jnp.sum(channel_sums * channel_sums), "data")


def _compiled_conv_step(num_devices: int) -> str:
    """Compiled HLO of the shard_map step of _conv_step on `num_devices`."""
    import jax.numpy as jnp

    from attn_jax.train.parallel import make_mesh, replicate, shard_batch, shard_map_step

    step = _conv_step
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


def test_one_device_pmap_step_is_compiled_like_the_shard_map_step():
    """The CPU tuning applies to both parallel modes: a one-device pmap step also sums on YNNPACK and
    convolves on XLA's kernels, and it computes the step."""
    import jax

    from attn_jax.train.parallel import pmap_step, split_for_pmap

    w, batch = np.ones((3, 3, 4, 8), np.float32), {"x": np.ones((8, 64, 64, 4), np.float32)}
    step = pmap_step(_conv_step, devices=jax.devices()[:1])
    split = split_for_pmap(batch, 1)
    ops = _ynn_ops(step.compile(w, split).as_text())
    assert "reduce" in ops and not {"convolution", "dot"} & ops, ops
    # every output pixel sees 3x3 taps of 4 ones inside the image (fewer at its border)
    taps = np.convolve(np.ones(64), np.ones(3), "same")
    y = np.einsum("h,w->hw", taps, taps)[None, :, :, None] * 4 * np.ones((8, 1, 1, 8))
    want = y.sum() * 8 + np.sum(np.sum(y * y, axis=(0, 1, 2)) ** 2)
    np.testing.assert_allclose(float(step(w, split)[1]), want, rtol=1e-5)


def test_xla_flags_that_set_the_kernel_library_are_left_to_decide(monkeypatch):
    from attn_jax.train.cpu import YNN_FLAG, YNN_REDUCTIONS_ONLY, train_compiler_options
    from attn_jax.train.parallel import make_mesh

    assert train_compiler_options(make_mesh(1)) == {YNN_FLAG: YNN_REDUCTIONS_ONLY}
    assert train_compiler_options(make_mesh(4)) is None
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 --{YNN_FLAG}=individual_dot")
    assert train_compiler_options(make_mesh(1)) is None


def test_a_jaxlib_that_refuses_the_reductions_only_value_gets_no_ynnpack(monkeypatch):
    from attn_jax.train import cpu
    from attn_jax.train.parallel import make_mesh

    monkeypatch.setattr(cpu, "_ONE_DEVICE_YNN_CHOICES", ("LIBRARY_FUSION_TYPE_NOT_A_TYPE", ""))
    cpu._ynn_choice.cache_clear()
    try:
        assert cpu.train_compiler_options(make_mesh(1)) == {cpu.YNN_FLAG: ""}
        monkeypatch.setattr(cpu, "_ONE_DEVICE_YNN_CHOICES", ("LIBRARY_FUSION_TYPE_NOT_A_TYPE",))
        cpu._ynn_choice.cache_clear()
        assert cpu.train_compiler_options(make_mesh(1)) is None  # XLA's defaults
    finally:
        cpu._ynn_choice.cache_clear()

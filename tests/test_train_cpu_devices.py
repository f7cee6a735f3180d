"""config.cpu_devices: the host CPU split into several XLA devices before JAX starts; later, a warning."""

import subprocess
import sys
import textwrap

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

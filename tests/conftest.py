"""Test setup: 8 simulated CPU devices (for data-parallel tests) and float64 available on demand.

XLA_FLAGS must be set before jax is first imported, which is why this lives in conftest.
"""

import os

import numpy as np
import pytest

# the collective timeouts as the trainer sets them (attn_jax.train.distributed.set_collective_timeouts):
# under xdist on 2 loaded cores a multi-device test's device can reach an all-reduce a minute late
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=86400"
    " --xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _upsample2x_bilinear(x):
    """NumPy 2x bilinear upsampling of (..., h, w) -> (..., 2h, 2w): half-pixel centres, clamped edges.

    Output pixel 2i sits at input coordinate i - 1/4 and 2i + 1 at i + 1/4: 3/4 of x[i] plus 1/4 of the
    neighbour before / after (the edge pixel itself past the border). Written out independently of
    jax.image.resize, which the library uses.
    """
    x = np.asarray(x, np.float64)
    for axis in (-2, -1):
        y = np.moveaxis(x, axis, -1)
        prev = np.concatenate([y[..., :1], y[..., :-1]], -1)
        nxt = np.concatenate([y[..., 1:], y[..., -1:]], -1)
        out = np.stack([0.75 * y + 0.25 * prev, 0.75 * y + 0.25 * nxt], -1).reshape(*y.shape[:-1], -1)
        x = np.moveaxis(out, -1, axis)
    return x


@pytest.fixture
def upsample2x_bilinear():
    """The NumPy reference above, for tests of modules and tools that resize maps by 2."""
    return _upsample2x_bilinear


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS directory for the tiny datasets (cluttered_digits/tiny*), built on first use and shared by
    the session's training tests."""
    return str(tmp_path_factory.mktemp("tfds"))


def _flip_a_checkpoint_byte(step_dir):
    """Flip one bit of the middle byte of the largest file of a checkpoint step (its checksum file
    aside): damage that the file sizes do not show."""
    from attn_jax.train.checkpoint import CHECKSUM_FILE

    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if f != CHECKSUM_FILE]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.fixture
def flip_a_checkpoint_byte():
    """The damage above, for the checkpoint tests."""
    return _flip_a_checkpoint_byte

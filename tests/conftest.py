"""Test setup: 8 simulated CPU devices (for data-parallel tests), float64 available on demand, and one
persistent compilation cache for the whole run.

XLA_FLAGS must be set before jax is first imported, which is why this lives in conftest.

The cache: many tests compile the same tiny programs, in several xdist workers and in the subprocesses
of the command-line, resume and multi-process tests; JAX's persistent cache (a temporary directory made by
the first process, inherited by the workers and subprocesses through the environment, removed at the end)
compiles each once. A cached executable computes what a fresh compilation does, so no test's values
change. An existing JAX_COMPILATION_CACHE_DIR is used as it is (and kept); without the filelock package
(the test extra has it) there is no cache.
"""

import importlib.util
import os
import shutil
import tempfile

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

_MADE_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and importlib.util.find_spec("filelock") is not None:
    _MADE_CACHE_DIR = tempfile.mkdtemp(prefix="attn_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _MADE_CACHE_DIR
    # programs that compile in under 0.1 s (op-by-op dispatch) are not worth a file; a size bound turns
    # on JAX's file lock (the filelock package), so that two processes writing one entry do not interleave
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))


def pytest_unconfigure(config):
    if _MADE_CACHE_DIR is not None:  # only the process that made it (xdist's controller, or the only one)
        shutil.rmtree(_MADE_CACHE_DIR, ignore_errors=True)


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

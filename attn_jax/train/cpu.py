"""CPU-only tuning of the training step, in one place: XLA compile options for a one-CPU-device process.

    options = train_compiler_options(mesh)        # None: XLA's defaults (GPU, TPU, several CPU devices)
    step = with_compiler_options(jax.pmap(fn, ...), options)

Applied by `parallel.shard_map_step` (jit's compiler_options) and `parallel.pmap_step` (compiled with the
options on first call per input signature), so both parallel modes compile the same way. The matrix-product
convolutions of the main job (model.matmul_grad, attn_jax.nn.conv.MatmulGradConv) are the other CPU-only
choice; they are part of the model. Measurements behind both: docs/cpu.md and
benchmarks/results/xla_reductions.json, benchmarks/results/cpu/train_throughput*.json.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# YNNPACK for reductions only: its per-channel sums (BatchNorm) beat XLA's own tree reductions, while
# several of its convolution and product kernels leave a core idle (docs/cpu.md)
YNN_REDUCTIONS_ONLY = "LIBRARY_FUSION_TYPE_REDUCE"
_ONE_DEVICE_YNN_CHOICES = (YNN_REDUCTIONS_ONLY, "")  # first the XLA takes wins; "" = no YNNPACK at all


@functools.cache
def _ynn_choice(device) -> str | None:
    """The YNN_FLAG value for a one-device CPU step: the first of _ONE_DEVICE_YNN_CHOICES this jaxlib's XLA
    takes as a compile option for `device` (an XLA flag: versions may drop it or its values); None if
    none."""
    probe = jax.device_put(np.float32(0), device)
    for value in _ONE_DEVICE_YNN_CHOICES:
        try:
            jax.jit(lambda x: x + 1, compiler_options={YNN_FLAG: value}).lower(probe).compile()
        except Exception:  # noqa: BLE001, S112 - XLA raises its own runtime error type for a bad option
            continue
        return value
    return None


def train_compiler_options(devices) -> dict | None:
    """XLA compile options for the training step over `devices`; None: XLA's defaults.

    On a CPU process holding one XLA device, the step's convolutions and products run on XLA's own
    multi-threaded (Eigen) kernels and its reductions on YNNPACK's (YNN_REDUCTIONS_ONLY, or no YNNPACK
    where this jaxlib refuses that value). With several CPU devices per process (the main job's
    cpu_devices=4) the devices already run side by side and XLA's default (YNNPACK throughout) stays;
    so it does on GPU and TPU. An XLA_FLAGS that sets the flag itself is left to decide. Measurements:
    docs/cpu.md ("One CPU device").

    Args:
      devices: a ``jax.sharding.Mesh`` (its local devices count) or a sequence of devices (those of this
        process count).

    Returns:
      The dict ``{YNN_FLAG: value}`` for ``jax.jit``'s ``compiler_options``, or None for XLA's defaults.
    """
    if isinstance(devices, jax.sharding.Mesh):
        local = list(devices.local_devices)
    else:
        local = [d for d in devices if d.process_index == jax.process_index()]
    if len(local) != 1 or local[0].platform != "cpu" or YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    value = _ynn_choice(local[0])
    return None if value is None else {YNN_FLAG: value}


def with_compiler_options(pmapped, options: dict | None):
    """A ``jax.pmap`` function (which takes no ``compiler_options``) compiled with XLA compile options.

    The wrapper compiles ``pmapped`` with ``options`` on the first call per input signature (shapes,
    dtypes, tree structure) and runs the executable. Under a trace (``jax.jit``, ``jax.export``) the call
    goes to ``pmapped`` itself; ``.lower`` is pmapped's and ``.compile(*args)`` gives the executable.

    Args:
      pmapped: the function ``jax.pmap`` returned.
      options: XLA compile options (e.g. :func:`train_compiler_options`); None or empty for none.

    Returns:
      A callable with the signature of ``pmapped``; ``pmapped`` itself when there are no options.

    Examples:
      >>> step = with_compiler_options(jax.pmap(fn, axis_name="data"), train_compiler_options(devices))
    """
    if not options:
        return pmapped
    return _CompiledPmap(pmapped, options)


class _CompiledPmap:
    def __init__(self, pmapped, options: dict):
        self._pmapped, self._options, self._compiled = pmapped, options, {}
        self.lower = pmapped.lower
        functools.update_wrapper(self, pmapped)

    def compile(self, *args):
        """The executable for arguments like `args`, compiled with the options (once per signature)."""
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves))
        if key not in self._compiled:
            self._compiled[key] = self._pmapped.lower(*args).compile(compiler_options=self._options)
        return self._compiled[key]

    def __call__(self, *args):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
            return self._pmapped(*args)
        return self.compile(*args)(*args)

"""PyTorch state_dict -> Flax variables, for users bringing weights from PyTorch (torch not imported).

    variables = torch_to_flax(model_pt.state_dict(), rename, template=flax_model.init(key, x))

Layouts are moved by the tensor's rank and key suffix:
    Conv2d weight (O, I, kh, kw)  -> "kernel" (kh, kw, I, O)     Conv1d weight (O, I, k) -> (k, I, O)
    Linear weight (O, I)          -> "kernel" (I, O)             1-D weight (norm layers) -> "scale"
    bias                          -> "bias"                      any other parameter -> same name
    running_mean / running_var    -> batch_stats "mean" / "var"  num_batches_tracked -> dropped
Convolutions, pooling and padding must be NHWC-equivalent on the Flax side (the attn_jax backbones pad
3x3 convs by 1, like PyTorch), and a Flatten before a Linear would need its kernel rows permuted (the
task models pool instead, so none is needed there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

#: The PyTorch reference task models' head modules (tests/test_torch_parity.py) -> attn_jax submodule paths.
SEED_RENAME: Mapping[str, str] = {
    "attention.0": "attention/conv",
    "classifier": "classifier",
    "cls_head": "cls_head",
    "reg_head": "reg_head",
}

_STATS = {"running_mean": "mean", "running_var": "var"}
_COLLECTIONS = ("params", "batch_stats")


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> NumPy."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def _convert_leaf(leaf: str, value: np.ndarray) -> tuple[str, str, np.ndarray]:
    """(collection, flax leaf name, array in Flax layout) for one PyTorch tensor."""
    if leaf in _STATS:
        return "batch_stats", _STATS[leaf], value
    if leaf == "weight":
        if value.ndim == 4:
            return "params", "kernel", value.transpose(2, 3, 1, 0)
        if value.ndim == 3:
            return "params", "kernel", value.transpose(2, 1, 0)
        if value.ndim == 2:
            return "params", "kernel", value.T
        return "params", "scale", value
    return "params", leaf, value


def _lookup(rename, prefix: str) -> str | None:
    if callable(rename):
        return rename(prefix)
    if prefix not in rename:
        known = ", ".join(sorted(rename))
        raise ValueError(f"rename has no entry for PyTorch module {prefix!r} (known: {known})")
    return rename[prefix]


def _check_against(variables: dict, template: Mapping[str, Any]) -> dict:
    """Raise ValueError on a missing, extra or mis-shaped leaf; cast to the template's dtypes."""
    got = traverse_util.flatten_dict(variables, sep="/")
    want = {
        k: v
        for k, v in traverse_util.flatten_dict(dict(template), sep="/").items()
        if k.split("/")[0] in _COLLECTIONS
    }
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"converted variables do not match the template: missing {missing}, unexpected {extra}"
        )
    for k, v in got.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(
                f"{k}: converted shape {tuple(v.shape)} != template shape {tuple(want[k].shape)}"
            )
        got[k] = v.astype(want[k].dtype)
    return traverse_util.unflatten_dict(got, sep="/")


def torch_to_flax(
    state_dict: Mapping[str, Any],
    rename: Mapping[str, str | None] | Callable[[str], str | None],
    *,
    template: Mapping[str, Any] | None = None,
) -> dict:
    """Convert a PyTorch ``state_dict`` to Flax variables ``{"params": ..., "batch_stats": ...}``.

    Conv weights (O, I, kh, kw) become kernels (kh, kw, I, O), linear weights (O, I) kernels (I, O),
    and BatchNorm's running statistics go to "batch_stats"; ``num_batches_tracked`` is dropped. torch
    itself is not imported: tensors are read through NumPy.

    Args:
      state_dict: PyTorch parameter names to tensors (any device) or array-likes.
      rename: maps each PyTorch module prefix (the key without its last component, e.g.
        ``"backbone.0"``) to a Flax module path (``"backbone/conv0_0"``), or to None to drop it; a
        callable is called with the prefix instead.
      template: the expected variables (e.g. ``model.init(...)`` or its ``jax.eval_shape``). When
        given, its "params" and "batch_stats" are compared leaf by leaf, and its dtypes are used.

    Returns:
      The variables as nested dicts of NumPy arrays.

    Raises:
      ValueError: a prefix that ``rename`` does not map (naming the known ones), or, with a
        ``template``, missing, unexpected or mis-shaped leaves (naming them).

    Examples:
      >>> import numpy as np
      >>> from attn_jax.nn import torch_to_flax
      >>> state_dict = {"fc.weight": np.ones((10, 4)), "fc.bias": np.zeros(10)}
      >>> variables = torch_to_flax(state_dict, {"fc": "classifier"})
      >>> variables["params"]["classifier"]["kernel"].shape
      (4, 10)
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, tensor in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        path = _lookup(rename, prefix)
        if path is None:
            continue
        collection, name, value = _convert_leaf(leaf, _to_numpy(tensor))
        flat[(collection, *path.split("/"), name)] = np.ascontiguousarray(value)
    variables = traverse_util.unflatten_dict(flat)
    return variables if template is None else _check_against(variables, template)


def torchvision_resnet_rename(
    stage_sizes, *, bottleneck: bool = False, torch_prefix: str = "", flax_prefix: str = ""
) -> dict[str, str | None]:
    """The ``rename`` of `torch_to_flax` for a ResNet written with torchvision's module names.

    Maps conv1, bn1, layer{i}.{j}.conv1 ..., downsample into
    ``attn_jax.nn.ResNet(stage_sizes, stem="imagenet")``; ``fc`` is dropped (attn_jax's ResNet is a
    feature extractor).

    Args:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      bottleneck: the blocks are bottleneck blocks (ResNet-50 and deeper).
      torch_prefix: prefix of the ResNet's keys in the state_dict, e.g. ``"backbone."``.
      flax_prefix: path of the ResNet inside the Flax model, e.g. ``"backbone/"``.

    Returns:
      PyTorch module prefix -> Flax module path (None for ``fc``).

    Examples:
      >>> from attn_jax.nn import torchvision_resnet_rename
      >>> rename = torchvision_resnet_rename((2, 2, 2, 2))
      >>> rename["layer2.0.downsample.0"], rename["fc"]
      ('ResNetBlock_2/conv_proj', None)
    """
    block = "BottleneckResNetBlock" if bottleneck else "ResNetBlock"
    convs = 3 if bottleneck else 2
    out: dict[str, str | None] = {
        f"{torch_prefix}conv1": f"{flax_prefix}conv_init",
        f"{torch_prefix}bn1": f"{flax_prefix}bn_init",
        f"{torch_prefix}fc": None,
    }
    k = 0
    for i, size in enumerate(stage_sizes):
        for j in range(size):
            src, dst = f"{torch_prefix}layer{i + 1}.{j}.", f"{flax_prefix}{block}_{k}/"
            for c in range(convs):
                out[f"{src}conv{c + 1}"] = f"{dst}Conv_{c}"
                out[f"{src}bn{c + 1}"] = f"{dst}BatchNorm_{c}"
            out[f"{src}downsample.0"] = f"{dst}conv_proj"
            out[f"{src}downsample.1"] = f"{dst}norm_proj"
            k += 1
    return out

"""An in-memory random-access source: a whole split decoded once into NumPy columns, cached beside the data.

Reading cluttered_digits record by record through `tfds.data_source` (an ArrayRecord read plus tfds
decoding per example) costs a sizeable share of a CPU training step (docs/cpu.md, "Whole-batch reads of
the embedded dataset"). The split is small (60,000 64x64 images), so it is decoded once into columns,
saved as .npy columns in a directory next to the dataset files (written under a temporary name, then
renamed: safe for concurrent processes) and afterwards memory-mapped; `__getitem__` is then a plain
array index. A manifest written at build time holds each column's file size, shape, dtype and CRC-32; a
cache that does not match it (truncated, edited, a column missing) raises DamagedCacheError naming the
file and saying to delete the directory (it is rebuilt on next use). Sizes are checked on every load, the
CRC-32 once per process and directory. A cache without a manifest (built by an older version) is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence

import numpy as np

_READ_BLOCK = 1024
MANIFEST = "manifest.json"
_VERIFIED: set[str] = set()  # cache directories whose checksums this process has verified


class DamagedCacheError(ValueError):
    """A memory-mapped cache does not match the manifest written when it was built."""


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


def _manifest_entry(path: str, value: np.ndarray) -> dict:
    return {
        "bytes": os.path.getsize(path),
        "shape": list(value.shape),
        "dtype": str(value.dtype),
        "crc32": _crc32(path),
    }


def _columns(records: Sequence[dict]) -> dict[str, np.ndarray]:
    """Records (dicts of arrays) -> columns: equal shapes stacked as `key`; ragged leading axes
    concatenated as `key` with offsets `key.offsets` (n + 1,)."""
    out = {}
    for key in records[0]:
        values = [np.asarray(r[key]) for r in records]
        if len({v.shape for v in values}) == 1:
            out[key] = np.stack(values)
        else:
            lengths = [len(v) for v in values]
            out[key] = np.concatenate([v.reshape(len(v), *values[0].shape[1:]) for v in values])
            out[key + ".offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return out


def _read_all(source) -> dict[str, np.ndarray]:
    if len(source) == 0:
        raise ValueError("MemorySource needs a non-empty source, got 0 records")
    records = []
    for start in range(0, len(source), _READ_BLOCK):
        keys = range(start, min(start + _READ_BLOCK, len(source)))
        records.extend(
            source.__getitems__(keys) if hasattr(source, "__getitems__") else map(source.__getitem__, keys)
        )
    return _columns(records)


def _save(columns: dict[str, np.ndarray], cache_dir: str) -> None:
    """One .npy per column in a fresh directory, renamed into place (a concurrent writer's copy wins)."""
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".memory-source-", dir=parent)
    manifest = {}
    for key, value in columns.items():
        path = os.path.join(tmp, key + ".npy")
        np.save(path, value)
        manifest[key + ".npy"] = _manifest_entry(path, value)
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump({"version": 1, "columns": manifest}, f, indent=1)
    try:
        os.rename(tmp, cache_dir)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)


def _damaged(cache_dir: str, problem: str) -> DamagedCacheError:
    return DamagedCacheError(
        f"memory-mapped data cache {cache_dir} is damaged: {problem}. Delete the directory "
        f"(rm -r {cache_dir}); it is rebuilt from the dataset files on next use"
    )


def _load(cache_dir: str) -> dict[str, np.ndarray]:
    """Memory-mapped columns (read-only; several processes share the pages), checked against the manifest."""
    try:
        with open(os.path.join(cache_dir, MANIFEST)) as f:
            manifest = json.load(f)["columns"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _damaged(cache_dir, f"its {MANIFEST} is unreadable ({type(err).__name__}: {err})") from None
    columns = {}
    for name, entry in sorted(manifest.items()):
        path = os.path.join(cache_dir, name)
        if not os.path.exists(path):
            raise _damaged(cache_dir, f"file {path} is missing")
        if os.path.getsize(path) != entry["bytes"]:
            raise _damaged(
                cache_dir, f"file {path} has {os.path.getsize(path)} bytes, {entry['bytes']} when built"
            )
        try:
            column = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise _damaged(cache_dir, f"file {path} cannot be read ({err})") from None
        if list(column.shape) != entry["shape"] or str(column.dtype) != entry["dtype"]:
            built = f"{entry['dtype']} {tuple(entry['shape'])}"
            raise _damaged(
                cache_dir, f"file {path} holds {column.dtype} {column.shape}, not the {built} built"
            )
        columns[name[: -len(".npy")]] = column
    if cache_dir not in _VERIFIED:
        for name, entry in sorted(manifest.items()):
            if _crc32(os.path.join(cache_dir, name)) != entry["crc32"]:
                raise _damaged(
                    cache_dir,
                    f"file {os.path.join(cache_dir, name)} changed since it was built (CRC-32 mismatch)",
                )
        _VERIFIED.add(cache_dir)
    return columns


def _rebuild_legacy(cache_dir: str) -> bool:
    """Remove a cache without a manifest (an older version's); True if one was removed."""
    if not os.path.isdir(cache_dir) or os.path.exists(os.path.join(cache_dir, MANIFEST)):
        return False
    if not any(n.endswith(".npy") for n in os.listdir(cache_dir)):
        return False
    print(f"memory-mapped data cache {cache_dir} has no {MANIFEST} (older version): rebuilding", flush=True)
    aside = tempfile.mkdtemp(prefix=".memory-source-old-", dir=os.path.dirname(os.path.abspath(cache_dir)))
    try:
        os.rename(cache_dir, os.path.join(aside, "old"))
    except OSError:  # another process moved it first
        pass
    shutil.rmtree(aside, ignore_errors=True)
    return True


class MemorySource:
    """Random-access source over a split held as NumPy columns. source: any (len, __getitem__) source
    of dict records; cache_dir: directory of .npy columns to reuse (built from `source` when missing)."""

    def __init__(self, source, cache_dir: str | None = None):
        if cache_dir and source is not None:
            _rebuild_legacy(cache_dir)
        if cache_dir and os.path.isdir(cache_dir):
            columns = _load(cache_dir)
        else:
            columns = _read_all(source)
            if cache_dir:
                _save(columns, cache_dir)
                columns = _load(cache_dir)
        self._cache_dir = cache_dir
        self._offsets = {k[: -len(".offsets")]: v for k, v in columns.items() if k.endswith(".offsets")}
        self._columns = {k: v for k, v in columns.items() if not k.endswith(".offsets")}
        if not self._columns:
            raise _damaged(cache_dir, "it holds no column")
        first = next(iter(self._columns))
        self._len = len(self._offsets[first]) - 1 if first in self._offsets else len(self._columns[first])
        if source is not None and self._len != len(source):
            raise _damaged(cache_dir, f"it holds {self._len} records, the dataset {len(source)}")

    def __reduce__(self):  # grain worker processes: re-open the memory map instead of pickling the data
        if self._cache_dir:
            return MemorySource, (None, self._cache_dir)
        return super().__reduce__()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -self._len <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} records")
        index %= self._len
        out = {}
        for key, column in self._columns.items():
            if key in self._offsets:
                lo, hi = self._offsets[key][index], self._offsets[key][index + 1]
                out[key] = np.asarray(column[lo:hi])
            else:
                out[key] = np.asarray(column[index])
        return out

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(values, offsets (n + 1,) for a ragged column else None), or None without such a column."""
        if key not in self._columns:
            return None
        return self._columns[key], self._offsets.get(key)

    @property
    def location(self) -> str | None:
        """The cache directory (None when held in memory only)."""
        return self._cache_dir

    def __repr__(self) -> str:
        return f"MemorySource({self._len} records, columns {sorted(self._columns)})"

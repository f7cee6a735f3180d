"""Input-pipeline throughput: ms per training batch from the in-memory source vs per-record tfds reads.

    python benchmarks/input_pipeline.py            # cluttered_digits, batch 128, crop (+ affine)

Variants run side by side, interleaved, in one process: "columns" (the default: whole batches gathered
from the memory-mapped columns, attn_jax.data.column_batches), "memory" (the same MemorySource read
record by record through grain, no prefetch threads) and "tfds" (tfds.data_source ArrayRecord reads,
4 prefetch threads, as before the cache). Prints a Markdown table of medians and writes
benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402


def _loader(source_kind: str, dataset: str, batch: int, augment: tuple[str, ...]):
    from attn_jax.data import make_pipeline
    from attn_jax.data import pipeline as pipeline_module
    from attn_jax.data import sources as S

    original = S.MemorySource
    if source_kind == "tfds":
        S.MemorySource = lambda source, cache_dir: source  # per-record reads, as before the cache
    pipeline_module.WHOLE_BATCH_READS = source_kind == "columns"
    try:
        loader = make_pipeline(dataset, "train", batch_size=batch, train=True, seed=0, num_devices=1,
                               augment=augment, shard_index=0, shard_count=1)  # fmt: skip
        it = iter(loader)
        next(it)  # builds the cache on first use; warms the prefetch buffer
        return it
    finally:
        S.MemorySource = original
        pipeline_module.WHOLE_BATCH_READS = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cluttered_digits")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "input_pipeline.json"))
    args = parser.parse_args(argv)
    variants = [(s, aug) for aug in (("crop",), ("crop", "affine")) for s in ("columns", "memory", "tfds")]
    iterators = {v: _loader(v[0], args.dataset, args.batch, v[1]) for v in variants}
    times = {v: [] for v in variants}
    for _ in range(args.rounds):  # interleaved rounds: load drifts hit every variant alike
        for v, it in iterators.items():
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            times[v].append((time.perf_counter() - t0) / args.batches)
    base = {aug: statistics.median(times[("tfds", aug)]) for _, aug in variants}
    rows = [
        dict(source=s, augment="+".join(aug), ms_per_batch=1e3 * statistics.median(times[(s, aug)]),
             speedup=base[aug] / statistics.median(times[(s, aug)]),
             rounds_ms=[1e3 * t for t in times[(s, aug)]])
        for s, aug in variants
    ]  # fmt: skip
    columns = [("source", "source", ""), ("augment", "augment", ""),
               ("ms_per_batch", "median ms / batch", ".1f"), ("speedup", "x vs tfds", ".2f")]  # fmt: skip
    harness.print_table(rows, columns)
    print(f"wrote {harness.write_json(args.out, rows, dataset=args.dataset, batch=args.batch)}")


if __name__ == "__main__":
    main()

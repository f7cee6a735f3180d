"""`attn-jax` console entry: train / eval / visualize / bench.

attn-jax train --config experiments/configs/{classification,detection,segmentation}.py[:ATTENTION]
               [--config.lr=...] [--workdir DIR]
attn-jax eval --config experiments/configs/<task>.py[:ATTENTION] --workdir DIR
attn-jax train --help [--config FILE]    # the flags; with --config, every --config.<field> and its default
attn-jax visualize ...   # = python -m attn_jax.viz ...   (arguments passed through verbatim)
attn-jax bench ...       # = python benchmarks/run.py ... (arguments passed through verbatim)
"""

from __future__ import annotations

import os
import runpy
import sys

COMMANDS = ("train", "eval", "visualize", "bench")


def _usage() -> str:
    return __doc__.strip().splitlines()[0] + "\n\n" + "\n".join(__doc__.strip().splitlines()[2:])


def _benchmarks_runner() -> str:
    candidates = [
        os.path.join(os.getcwd(), "benchmarks", "run.py"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run.py"),
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise SystemExit(
        f"attn-jax bench: benchmarks/run.py not found (looked in {candidates}); run it from the repo"
    )


def train_callbacks() -> tuple:
    """End-of-run hooks of `attn-jax train`: the attention-map PNG (attn_jax.viz draws it; the train
    package itself never imports viz)."""
    from attn_jax.viz.hooks import attention_png

    return (attention_png,)


def main(argv: list[str] | None = None) -> None:
    """Dispatch argv[1] (argv defaults to sys.argv); everything after the subcommand is passed untouched."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help") or argv[1] not in COMMANDS:
        print(_usage(), file=sys.stderr if len(argv) >= 2 and argv[1] not in ("-h", "--help") else sys.stdout)
        raise SystemExit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    command, rest = argv[1], argv[2:]
    if command in ("train", "eval"):
        from attn_jax.train.main import run

        run(command, [f"attn-jax {command}", *rest], callbacks=train_callbacks())
    elif command == "visualize":
        sys.argv = ["attn_jax.viz", *rest]
        runpy.run_module("attn_jax.viz", run_name="__main__", alter_sys=True)
    else:
        path = _benchmarks_runner()
        sys.argv = [path, *rest]
        runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()

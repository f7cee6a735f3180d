"""`attn-jax` console entry: train / eval / visualize.

attn-jax train --config experiments/configs/{classification,detection,segmentation}.py[:ATTENTION]
               [--config.lr=...] [--workdir DIR]
attn-jax eval --config experiments/configs/<task>.py[:ATTENTION] --workdir DIR
attn-jax train --help [--config FILE]    # the flags; with --config, every --config.<field> and its default
attn-jax visualize ...   # = python -m attn_jax.viz ...   (arguments passed through verbatim)

Benchmarks live in the repository, not in the installed package: from a checkout, run
`python benchmarks/run.py ...` (see docs/benchmarks.md).
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = ("train", "eval", "visualize")
REMOVED = {"bench": "benchmarks live in the repository: from a checkout, run `python benchmarks/run.py ...`"}


def _usage() -> str:
    return __doc__.strip().splitlines()[0] + "\n\n" + "\n".join(__doc__.strip().splitlines()[2:])


def train_callbacks() -> tuple:
    """End-of-run hooks of `attn-jax train`: the attention-map PNG (attn_jax.viz draws it; the train
    package itself never imports viz)."""
    from attn_jax.viz.hooks import attention_png

    return (attention_png,)


def main(argv: list[str] | None = None) -> None:
    """Dispatch argv[1] (argv defaults to sys.argv); everything after the subcommand is passed untouched."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] in REMOVED:
        print(f"attn-jax: error: no command {argv[1]!r}: {REMOVED[argv[1]]}", file=sys.stderr)
        raise SystemExit(2)
    if len(argv) < 2 or argv[1] in ("-h", "--help") or argv[1] not in COMMANDS:
        print(_usage(), file=sys.stderr if len(argv) >= 2 and argv[1] not in ("-h", "--help") else sys.stdout)
        raise SystemExit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
    command, rest = argv[1], argv[2:]
    if command in ("train", "eval"):
        from attn_jax.train.main import run

        run(command, [f"attn-jax {command}", *rest], callbacks=train_callbacks())
    else:
        sys.argv = ["attn_jax.viz", *rest]
        runpy.run_module("attn_jax.viz", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""`attn-jax` console entry: train / eval / visualize / compare.

attn-jax train --config experiments/configs/{classification,detection,segmentation}.py[:ATTENTION]
               [--config.optim.lr=...] [--workdir DIR]
attn-jax eval --config experiments/configs/<task>.py[:ATTENTION] --workdir DIR
attn-jax train --help [--config FILE]    # the flags; with --config, every --config.<field> and its default
attn-jax visualize ...   # = python -m attn_jax.viz ...   (arguments passed through verbatim)
attn-jax compare RUN_A RUN_B ... [--baseline RUN] [--metrics m1,m2] [--output table.md] [--json out.json]
                         # test metrics over seeds with 95% intervals, paired differences vs the baseline

Benchmarks live in the repository, not in the installed package: from a checkout, run
`python benchmarks/run.py ...` (see docs/benchmarks.md).
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = ("train", "eval", "visualize", "compare")
REMOVED = {"bench": "benchmarks live in the repository: from a checkout, run `python benchmarks/run.py ...`"}


def _usage() -> str:
    return __doc__.strip().splitlines()[0] + "\n\n" + "\n".join(__doc__.strip().splitlines()[2:])


def train_callbacks() -> tuple:
    """The end-of-run hooks of ``attn-jax train``.

    Returns:
      A tuple of callbacks for ``attn_jax.train.train_and_evaluate``; today the attention-map PNG of
      ``attn_jax.viz.hooks.attention_png`` (the train package itself never imports viz).
    """
    from attn_jax.viz.hooks import attention_png

    return (attention_png,)


def main(argv: list[str] | None = None) -> None:
    """The ``attn-jax`` console entry: run the subcommand ``argv[1]``.

    ``train`` and ``eval`` go to ``attn_jax.train.main.run``, ``visualize`` to ``python -m attn_jax.viz``,
    ``compare`` to ``attn_jax.compare.main``; everything after the subcommand is passed on untouched.

    Args:
      argv: the command line, program name first; None for ``sys.argv``.

    Raises:
      SystemExit: status 0 after ``-h`` / ``--help`` (the usage on stdout); status 2 without a subcommand,
        for an unknown one (the usage on stderr) or for the removed ``bench``; the subcommand's own exit
        status when it ends with one (e.g. 75 after a preemption or a stall).
    """
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
    elif command == "compare":
        from attn_jax.compare import main as compare

        compare(rest)
    else:
        sys.argv = ["attn_jax.viz", *rest]
        runpy.run_module("attn_jax.viz", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

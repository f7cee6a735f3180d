"""AttentionReader: greedy decoding (tokens/s) and one training step (images/s), JAX against PyTorch.

    python benchmarks/reader_decode.py            # table + benchmarks/results/cpu/reader_decode.json
    python benchmarks/reader_decode.py --quick    # smoke run at tiny sizes (seconds per variant)
    python benchmarks/reader_decode.py --variants jax torch-compile --rounds 5
    python benchmarks/reader_decode.py --matmul-grad none --variants jax   # XLA's own conv gradients

The model is `attn_jax.models.AttentionReader` at the size of the cluttered_digits ``reading`` config:
SmallCNN (16, 32, 64, 96), stride 8, on 64x128x1 images (an 8 x 16 grid, n = 128 positions of d = 98),
an LSTM of 256, attention width 128, token embedding 64, 11 output tokens (digits and END), T = 5 steps
(L = 4 digits and END), batch 128. The decode step is the one-query shape of additive attention (m = 1).
Variants, each in a fresh process per round, the rounds interleaved (A B C A B C ...):
    jax            the Flax model under jax.jit: `method="decode"` (nn.scan over the T steps with a done
                   mask), and the training step (teacher forcing under nn.scan, masked token
                   cross-entropy + the doubly stochastic penalty, gradients, optax AdamW; state donated);
                   the stride-2 convs train as matrix products unless --matmul-grad none (the reading
                   config's CPU choice, cpu.matmul_grad = "strided"; the model is the same either way)
    torch-eager    the same model in PyTorch (`TorchReader`: the same layers and step, loaded with the
                   Flax weights it gives the same logits): a Python loop over the T steps
    torch-compile  the same under torch.compile (decoding and the teacher-forced forward)
XLA moves the key projection W_k h_i out of the decoding loop (the grid does not change between steps);
the PyTorch twin computes it once before its loop too, as Show-Attend-Tell implementations do. Decoding
tokens/s counts B * T tokens per call (the done mask runs every step). Timing on a shared machine is only
meaningful relative to the other variants of the same run: the JSON records the load average and uptime.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

VARIANTS = ("jax", "torch-eager", "torch-compile")
REAL = dict(batch=128, height=64, width=128, features=(16, 32, 64, 96), stride=8, hidden=256, attention=128,
            embed=64, max_length=5, matmul_grad="strided")  # fmt: skip
QUICK = dict(batch=4, height=16, width=32, features=(4, 8), stride=4, hidden=16, attention=8, embed=4,
             max_length=3, matmul_grad="strided")  # fmt: skip
NUM_CLASSES, END, PAD = 11, 10, 11
PENALTY = 1.0  # lambda of the doubly stochastic penalty in the training loss
LR, WEIGHT_DECAY = 1e-3, 1e-4
COLUMNS = [
    ("variant", "variant", ""), ("batch", "batch", ""), ("decode_ms", "greedy decode ms", ".1f"),
    ("decode_tokens_per_s", "decode tokens/s", ".0f"), ("train_ms", "train step ms", ".1f"),
    ("train_images_per_s", "train images/s", ".0f"), ("x_compile_decode", "decode x torch.compile", ".2f"),
    ("x_compile_train", "train x torch.compile", ".2f"), ("rounds", "rounds", ""),
]  # fmt: skip
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cpu" / "reader_decode.json"


def host_batch(size: dict, seed: int = 0) -> dict:
    """Random images (B, H, W, 1) float32 and target sequences (B, T) in the data's format: 1 to T - 1
    digits, END, then PAD."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, t = size["batch"], size["max_length"]
    lengths = rng.integers(1, t, b)
    tokens = np.where(np.arange(t) < lengths[:, None], rng.integers(0, 10, (b, t)), PAD)
    tokens[np.arange(b), lengths] = END
    images = rng.normal(size=(b, size["height"], size["width"], 1)).astype(np.float32)
    return {"image": images, "sequence": tokens.astype(np.int32)}


def jax_model(size: dict):
    from attn_jax.models import AttentionReader
    from attn_jax.nn import SmallCNN

    backbone = SmallCNN(features=size["features"], stride=size["stride"], matmul_grad=size["matmul_grad"])
    return AttentionReader(backbone, num_classes=NUM_CLASSES, end_token=END, max_length=size["max_length"],
                           hidden_size=size["hidden"], attention_dim=size["attention"],
                           embed_size=size["embed"])  # fmt: skip


def jax_steps(size: dict):
    """(decode_call, train_call) of the Flax model under jax.jit; each blocks until done."""
    import functools

    import jax
    import optax

    from attn_jax.losses import doubly_stochastic_penalty, sequence_cross_entropy, steps_up_to_end

    model = jax_model(size)
    host = host_batch(size)
    images, tokens = jax.device_put(host["image"]), jax.device_put(host["sequence"])
    variables = jax.jit(model.init)(jax.random.key(0), images, tokens)
    optimizer = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    state["opt"] = optimizer.init(state["params"])
    decode = jax.jit(functools.partial(model.apply, method="decode"))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, images, tokens):
        def loss_fn(params):
            (logits, alpha), updates = model.apply(
                {"params": params, "batch_stats": state["batch_stats"]}, images, tokens, train=True,
                mutable=["batch_stats"],
            )  # fmt: skip
            mask = steps_up_to_end(tokens, END)
            loss = sequence_cross_entropy(logits, tokens, mask)
            return loss + doubly_stochastic_penalty(alpha, mask, weight=PENALTY), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        deltas, opt = optimizer.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], deltas)
        return {"params": params, "batch_stats": updates["batch_stats"], "opt": opt}, loss

    box = [state]

    def decode_call():
        variables = {"params": box[0]["params"], "batch_stats": box[0]["batch_stats"]}
        jax.block_until_ready(decode(variables, images))

    def train_call():
        box[0], loss = train_step(box[0], images, tokens)
        jax.block_until_ready(loss)

    return decode_call, train_call


def torch_reader_class():
    """The PyTorch twin's class (defined on demand: torch is imported only where it is installed)."""
    import torch
    from torch import nn

    from benchmarks.torch_models import TorchSmallCNN

    class TorchReader(nn.Module):
        """AttentionReader in PyTorch: TorchSmallCNN, coordinates, an LSTMCell queried attention, greedy."""

        def __init__(
            self, features, stride, hidden, attention, embed, num_classes=NUM_CLASSES, in_channels=1
        ):
            super().__init__()
            self.backbone = TorchSmallCNN(features, stride, in_channels)
            d = self.backbone.out_channels + 2
            self.init_c, self.init_s = nn.Linear(d, hidden), nn.Linear(d, hidden)
            self.embed = nn.Embedding(num_classes + 1, embed)
            self.w_q = nn.Linear(hidden, attention)  # its bias is the attention bias b
            self.w_k = nn.Linear(d, attention, bias=False)
            self.w_a = nn.Linear(attention, 1, bias=False)
            self.beta = nn.Linear(hidden, 1)
            self.lstm = nn.LSTMCell(embed + d, hidden)
            self.output = nn.Linear(hidden + d + embed, num_classes)
            self.num_classes = num_classes

        def encode(self, images):
            """NCHW images -> features (B, n, d) with each position's (row, column) in [-1, 1] appended."""
            grid = self.backbone(images).permute(0, 2, 3, 1)
            b, h, w, _ = grid.shape
            ys = torch.linspace(-1.0, 1.0, h) if h > 1 else torch.zeros(1)
            xs = torch.linspace(-1.0, 1.0, w) if w > 1 else torch.zeros(1)
            coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).expand(b, h, w, 2)
            return torch.cat([grid, coords.to(grid.dtype)], -1).reshape(b, h * w, -1)

        def start(self, images):
            features = self.encode(images)
            mean = features.mean(1)
            return features, self.w_k(features), (self.init_c(mean), self.init_s(mean))

        def step(self, carry, previous, features, keys):
            c, s = carry
            scores = self.w_a(torch.tanh(self.w_q(s)[:, None, :] + keys))[..., 0]
            alpha = torch.softmax(scores, -1)
            context = torch.bmm(alpha[:, None, :], features)[:, 0]
            gated = torch.sigmoid(self.beta(s)) * context
            embedded = self.embed(previous)
            s_new, c_new = self.lstm(torch.cat([embedded, gated], -1), (s, c))
            logits = self.output(torch.cat([s_new, gated, embedded], -1))
            return (c_new, s_new), logits, alpha

        def forward(self, images, tokens):
            """Teacher forcing: logits (B, T, V) and alpha (B, T, n)."""
            features, keys, carry = self.start(images)
            tokens = torch.where(
                (tokens >= 0) & (tokens < self.num_classes), tokens, torch.full_like(tokens, END)
            )
            start = torch.full_like(tokens[:, :1], self.num_classes)
            previous = torch.cat([start, tokens[:, :-1]], 1)
            logits, alphas = [], []
            for t in range(tokens.shape[1]):
                carry, step_logits, alpha = self.step(carry, previous[:, t], features, keys)
                logits.append(step_logits)
                alphas.append(alpha)
            return torch.stack(logits, 1), torch.stack(alphas, 1)

        def decode(self, images, max_length: int):
            """Greedy: tokens (B, T) (END after the first END), scores (B,), alpha (B, T, n)."""
            features, keys, carry = self.start(images)
            b = images.shape[0]
            previous = torch.full((b,), self.num_classes, dtype=torch.long)
            done = torch.zeros(b, dtype=torch.bool)
            score = torch.zeros(b)
            tokens, alphas = [], []
            for _ in range(max_length):
                carry, logits, alpha = self.step(carry, previous, features, keys)
                token = torch.where(done, torch.full_like(previous, END), logits.argmax(-1))
                logp = torch.log_softmax(logits, -1).gather(1, token[:, None])[:, 0]
                score = score + torch.where(done, torch.zeros_like(logp), logp)
                done = done | (token == END)
                tokens.append(token)
                alphas.append(alpha)
                previous = token
            return torch.stack(tokens, 1), score, torch.stack(alphas, 1)

    return TorchReader


def torch_model(size: dict):
    return torch_reader_class()(size["features"], size["stride"], size["hidden"], size["attention"],
                                size["embed"])  # fmt: skip


def load_flax_weights(model, variables: dict) -> None:
    """Copy the Flax AttentionReader's variables into a TorchReader of the same sizes (in place)."""
    import numpy as np
    import torch

    p, stats = variables["params"], variables["batch_stats"]
    t = lambda x: torch.from_numpy(np.array(x, np.float32))  # noqa: E731
    with torch.no_grad():
        for i in range(len(model.backbone) // 3):
            conv, bn = model.backbone[3 * i], model.backbone[3 * i + 1]
            conv.weight.copy_(t(p["backbone"][f"conv{i}_0"]["kernel"]).permute(3, 2, 0, 1))
            bn.weight.copy_(t(p["backbone"][f"bn{i}_0"]["scale"]))
            bn.bias.copy_(t(p["backbone"][f"bn{i}_0"]["bias"]))
            bn.running_mean.copy_(t(stats["backbone"][f"bn{i}_0"]["mean"]))
            bn.running_var.copy_(t(stats["backbone"][f"bn{i}_0"]["var"]))
        for name in ("init_c", "init_s"):
            getattr(model, name).weight.copy_(t(p[name]["kernel"]).T)
            getattr(model, name).bias.copy_(t(p[name]["bias"]))
        step = p["step"]
        model.embed.weight.copy_(t(step["embed"]["embedding"]))
        model.w_q.weight.copy_(t(step["w_q"]).T)
        model.w_q.bias.copy_(t(step["bias"]))
        model.w_k.weight.copy_(t(step["w_k"]).T)
        model.w_a.weight.copy_(t(step["w_a"])[None, :])
        model.beta.weight.copy_(t(step["beta"]["kernel"]).T)
        model.beta.bias.copy_(t(step["beta"]["bias"]))
        lstm = step["lstm"]
        model.lstm.weight_ih.copy_(torch.cat([t(lstm["i" + g]["kernel"]).T for g in "ifgo"]))
        model.lstm.weight_hh.copy_(torch.cat([t(lstm["h" + g]["kernel"]).T for g in "ifgo"]))
        model.lstm.bias_hh.copy_(torch.cat([t(lstm["h" + g]["bias"]) for g in "ifgo"]))
        model.lstm.bias_ih.zero_()
        model.output.weight.copy_(t(step["output"]["kernel"]).T)
        model.output.bias.copy_(t(step["output"]["bias"]))


def torch_steps(size: dict, compiled: bool):
    """(decode_call, train_call) of the PyTorch twin, eager or under torch.compile."""
    import torch

    torch.manual_seed(0)
    model = torch_model(size)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    host = host_batch(size)
    images = torch.from_numpy(host["image"].transpose(0, 3, 1, 2).copy())
    tokens = torch.from_numpy(host["sequence"]).long()
    length = size["max_length"]
    forward = torch.compile(model) if compiled else model
    decode = torch.compile(model.decode) if compiled else model.decode
    ended = torch.cumsum(tokens == END, 1)
    mask = torch.cat([torch.zeros_like(ended[:, :1]), ended[:, :-1]], 1) == 0

    def decode_call():
        model.eval()
        with torch.no_grad():
            decode(images, length)

    def train_call():
        model.train()
        opt.zero_grad(set_to_none=True)
        logits, alpha = forward(images, tokens)
        targets = torch.where(mask, tokens, 0).flatten()
        losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets, reduction="none")
        loss = (losses * mask.flatten()).sum() / mask.sum().clamp(min=1)
        covered = (alpha * mask[..., None]).sum(1)
        loss = loss + PENALTY * ((1.0 - covered) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()

    return decode_call, train_call


def measure(variant: str, size: dict, warmup: int, repeats: int) -> dict:
    """In the child: build the variant, time decoding then the training step (first calls compile)."""
    import time

    if variant == "jax":
        decode, train = jax_steps(size)
    else:
        decode, train = torch_steps(size, compiled=variant == "torch-compile")
    out = {}
    for name, call in (("decode", decode), ("train", train)):
        t0 = time.perf_counter()
        call()
        out[f"{name}_first_s"] = time.perf_counter() - t0
        out[f"{name}_times"] = harness.timed_calls(call, warmup, repeats)
    return out


def torch_available() -> bool:
    from benchmarks import torch_peer

    return torch_peer.available()


def summarise(variant: str, runs: list[dict], size: dict) -> dict:
    """A table row: the median over rounds of each round's median decode / train time."""
    b, t = size["batch"], size["max_length"]
    row = {"variant": variant, "batch": b, "max_length": t, "rounds": len(runs)}
    for name in ("decode", "train"):
        medians = [statistics.median(r[f"{name}_times"]) for r in runs]
        row[f"{name}_round_ms"] = [1e3 * m for m in medians]
        row[f"{name}_ms"] = 1e3 * statistics.median(medians)
        row[f"{name}_first_s"] = statistics.median(r[f"{name}_first_s"] for r in runs)
    row["decode_tokens_per_s"] = b * t / (row["decode_ms"] / 1e3)
    row["train_images_per_s"] = b / (row["train_ms"] / 1e3)
    return row


def run(variants, size: dict, *, rounds: int, warmup: int, repeats: int, timeout: float = 900) -> list[dict]:
    """Interleaved rounds of every variant, each in a fresh process -> table rows (errors as `error` rows)."""
    runs = {v: [] for v in variants}
    errors = {}
    for r in range(rounds):
        for variant in variants:
            if variant in errors:
                continue
            try:
                args = (variant, size, warmup, repeats)
                runs[variant].append(
                    harness.run_in_fresh_process(measure, args, timeout=timeout, label=f"variant {variant}")
                )
            except RuntimeError as e:
                errors[variant] = str(e)
                print(f"  ! {variant}: {e}", file=sys.stderr, flush=True)
                continue
            last = runs[variant][-1]
            print(f"  round {r} {variant}: decode {1e3 * statistics.median(last['decode_times']):.1f} ms, "
                  f"train {1e3 * statistics.median(last['train_times']):.1f} ms", flush=True)  # fmt: skip
    rows = [{"variant": v, "batch": size["batch"], "error": errors[v]} if v in errors
            else summarise(v, runs[v], size) for v in variants]  # fmt: skip
    ref = next((r for r in rows if r["variant"] == "torch-compile" and "train_ms" in r), None)
    for row in rows:
        if ref is not None and "train_ms" in row:
            row["x_compile_decode"] = row["decode_tokens_per_s"] / ref["decode_tokens_per_s"]
            row["x_compile_train"] = row["train_images_per_s"] / ref["train_images_per_s"]
    return rows


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _parse(argv):
    from attn_jax.nn.backbones import MATMUL_GRAD_CHOICES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=None, help=f"images per call (default {REAL['batch']})")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 round, 2 repeats (smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--matmul-grad", default=REAL["matmul_grad"], choices=MATMUL_GRAD_CHOICES,
        help="the JAX SmallCNN's convs trained as matrix products (the reading config's cpu.matmul_grad)",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.size = dict(QUICK if args.quick else REAL, matmul_grad=args.matmul_grad)
    if args.quick:
        args.rounds, args.warmup, args.repeats = 1, 1, 2
    if args.batch is not None:
        if args.batch < 1:
            p.error(f"--batch must be >= 1; got {args.batch}")
        args.size["batch"] = args.batch
    return args


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    variants = list(dict.fromkeys(args.variants))
    if any(v.startswith("torch") for v in variants) and not torch_available():
        print(
            "torch not installed: skipping the PyTorch variants (pip install torch==2.13.0)", file=sys.stderr
        )
        variants = [v for v in variants if not v.startswith("torch")]
    before, load_before = _uptime(), os.getloadavg()
    rows = run(variants, args.size, rounds=args.rounds, warmup=args.warmup, repeats=args.repeats)
    load_after = os.getloadavg()
    n = math.prod(-(-s // args.size["stride"]) for s in (args.size["height"], args.size["width"]))
    shape = f"{args.size['height']}x{args.size['width']} images, n = {n}, T = {args.size['max_length']}"
    print(f"\n### AttentionReader: greedy decoding and a training step ({shape}; load average before "
          f"{load_before}, after {load_after})\n")  # fmt: skip
    harness.print_table(rows, COLUMNS)
    extra = {"quick": args.quick, "size": args.size, "loadavg_before": load_before,
             "loadavg_after": load_after, "uptime_before": before, "uptime_after": _uptime()}  # fmt: skip
    path = harness.write_json(args.out, rows, **extra)
    print(f"\nwrote {path}")
    return rows


if __name__ == "__main__":
    main()

"""The reader's attention, step by step, as in Show, Attend and Tell's figures: one row per image, the map
of each decoding step over the image, titled with the digit read at that step.

    reading_png(run)   # end-of-run hook of a reading run: <workdir>/attention_maps.png
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attn_jax.viz.draw import overlay_rgb  # noqa: E402
from attn_jax.viz.runs import run_end_examples  # noqa: E402


def step_maps(attention: np.ndarray, grid_shape: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Each step's attention weights (B, T, n) as maps at the image's resolution (B, T, H, W).

    Args:
      attention: float (B, T, n), n = h * w positions of the feature grid, row-major.
      grid_shape: (h, w).
      image_hw: (H, W) of the images.

    Returns:
      float32 (B, T, H, W): each grid cell's weight spread over the image block it stands for (nearest,
      so the maximum stays in its cell).

    Raises:
      ValueError: n is not h * w.

    Examples:
      >>> step_maps(np.eye(4)[None, :2], (2, 2), (4, 4))[0, 1]
      array([[0., 0., 1., 1.],
             [0., 0., 1., 1.],
             [0., 0., 0., 0.],
             [0., 0., 0., 0.]], dtype=float32)
    """
    attention = np.asarray(attention, np.float32)
    h, w = grid_shape
    if attention.ndim != 3 or attention.shape[-1] != h * w:
        raise ValueError(f"attention must be (B, T, {h} * {w}); got shape {attention.shape}")
    grid = attention.reshape(*attention.shape[:2], h, w)
    rows = (np.arange(image_hw[0]) * h) // image_hw[0]
    cols = (np.arange(image_hw[1]) * w) // image_hw[1]
    return grid[:, :, rows][:, :, :, cols]


def token_text(token: int, end_token: int) -> str:
    """A token as shown: the digit, or "END"."""
    return "END" if int(token) == end_token else str(int(token))


def reading_grid(path: str, images, tokens, attention, grid_shape, end_token: int, targets=None, title=""):
    """Draw images x decoding steps: each step's attention over the image, titled with the token read.

    Args:
      path: the PNG to write (its directory is made).
      images: (B, H, W, C).
      tokens: int (B, T), the decoded tokens.
      attention: float (B, T, n).
      grid_shape: (h, w) of the feature grid.
      end_token: the END token (steps after the first END are left blank).
      targets: optional int (B, T') target strings, shown at the start of each row.
      title: the figure's title.

    Returns:
      ``path``.
    """
    images, tokens = np.asarray(images), np.asarray(tokens)
    maps = step_maps(attention, grid_shape, images.shape[1:3])
    b, t = tokens.shape
    fig, axes = plt.subplots(b, t + 1, figsize=(2.2 * (t + 1), 1.4 * b + 0.6), squeeze=False)
    for i in range(b):
        ended = False
        truth = ""
        if targets is not None:
            truth = "".join(token_text(x, end_token) for x in np.asarray(targets)[i] if 0 <= x < end_token)
        axes[i, 0].imshow(overlay_rgb(images[i], None))
        axes[i, 0].set_title(f"image{': ' + truth if truth else ''}", fontsize=8)
        for s in range(t):
            ax = axes[i, s + 1]
            if ended:
                ax.axis("off")
                continue
            ax.imshow(overlay_rgb(images[i], maps[i, s]))
            ax.set_title(f"step {s + 1}: {token_text(tokens[i, s], end_token)}", fontsize=8)
            ended = int(tokens[i, s]) == end_token
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def reading_png(run) -> dict:
    """<workdir>/attention_maps.png of a reading run: config.png_examples test images read greedily, the
    attention of every step (process 0; nothing when png_examples is 0). run: attn_jax.train.RunEnd."""
    config, task = run.config, run.task
    n = config.png_examples
    if not n or jax.process_index() != 0:
        return {"attention_png": None}
    batch, variables = run_end_examples(run)
    read = run.model.apply(variables, jnp.asarray(batch["image"]), method="decode")
    path = os.path.join(run.workdir, "attention_maps.png")
    step = run.summary.get("step")
    title = f"reading, additive attention: each step's map and the digit read (greedy), step {step}"
    return {
        "attention_png": reading_grid(
            path,
            batch["image"],
            read.tokens,
            read.attention,
            task.grid_shape(),
            task.end_token,
            targets=batch["sequence"],
            title=title,
        )  # fmt: skip
    }

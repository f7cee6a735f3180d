"""`cluttered_digits`: the embedded default TFDS dataset (no download, no TensorFlow needed).

scikit-learn's 1,797 bundled 8x8 handwritten digits, upscaled and placed on a cluttered canvas (clutter =
fragments of other digits of the same split), in the tradition of cluttered MNIST. One dataset serves
classification (`label`), detection (`boxes`, `box_labels`) and segmentation (`mask`); the reading
configs (``reading``, ``tiny_reading``) also serve reading (`sequence`).

Features of every example:
    image       uint8 (H, W, C)    C = 1 (default) or 3
    label       int64 ()           class of the main digit (the first box)
    boxes       float32 (k, 4)     normalised (ymin, xmin, ymax, xmax), tight around each digit's mask pixels
    box_labels  int64 (k,)         digit class of each box
    source_ids  int64 (k,)         index of each digit in sklearn.datasets.load_digits() (identity)
    mask        uint8 (H, W)       0 = background, class + 1 on digit pixels (clutter is background)
    sequence    int64 (L + 1,)     reading configs only: the digit string, left to right, then END, then PAD

Reading configs (``reading=True``) place 1 to L = ``max_digits`` digits left to right in a row, apart
along x (their boxes never overlap and come in reading order), amid clutter on a wide canvas. Their
``sequence`` tokens: the digits 0-9 are their own ids, `END_TOKEN` = 10 follows the last digit and
`PAD_TOKEN` = 11 fills the rest, e.g. "307" with L = 4 is [3, 0, 7, 10, 11].

Source digits are split by identity (80% / 20%) between "train" and "test". Examples are a
deterministic function of (config, version): built in chunks of `CHUNK` examples, chunk c of split s drawn
with `np.random.default_rng([seed, s, c])`. Files are array_record, so `tfds.data_source` reads them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from attn_jax.data import _synth
from attn_jax.data._paths import default_data_dir

CHUNK = 1000
_SPLIT_CODES = {"train": 0, "test": 1}
#: The token after the last digit of a reading example's ``sequence`` (the digits 0-9 are their own ids).
END_TOKEN = _synth.END_TOKEN
#: The token that fills a reading example's ``sequence`` after `END_TOKEN`.
PAD_TOKEN = _synth.PAD_TOKEN


@dataclasses.dataclass(eq=False)
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
    """A cluttered_digits variant: canvas size, channels, digits per image, clutter, split sizes, seed.

    The built-in variants are `BUILDER_CONFIGS` (``default``, ``detection``, ``tiny``,
    ``tiny_detection``, ``reading``, ``tiny_reading``); a config of your own goes wherever a dataset name
    does (`prepare`, `dataset_info`, `make_pipeline`) and is built on first use like the others. Besides
    the fields below it takes TFDS's ``name`` (its directory under ``cluttered_digits/``) and
    ``description``. Examples are a deterministic function of the config.

    Examples:
      >>> config = ClutteredDigitsConfig(name="large", canvas_size=96, max_digits=2)
      >>> config.num_examples, config.spec.canvas_size
      ({'train': 50000, 'test': 10000}, 96)
      >>> wide = ClutteredDigitsConfig(name="row", canvas_width=128, max_digits=4, reading=True)
      >>> wide.image_hw, wide.sequence_length
      ((64, 128), 5)
    """

    canvas_size: int = 64
    """Height of the canvas in pixels, and its width unless ``canvas_width`` is given; digit and clutter
    sizes follow it."""
    channels: int = 1
    """1 (grey) or 3 (the grey image repeated)."""
    min_digits: int = 1
    """Fewest digits per image (each with a box and a mask)."""
    max_digits: int = 1
    """Most digits per image."""
    num_clutter: int = 6
    """Fragments of other digits of the same split scattered as clutter."""
    num_train: int = 50_000
    """Examples of the "train" split."""
    num_test: int = 10_000
    """Examples of the "test" split."""
    seed: int = 0
    """Seed of the split of digit identities and of every example."""
    canvas_width: int | None = None
    """Width of the canvas in pixels; None gives ``canvas_size`` (a square)."""
    reading: bool = False
    """Digits left to right in a row, apart along x, and the feature ``sequence`` (see the module
    docstring); needs max_digits * the largest digit side (0.4375 * canvas_size) <= the width."""

    @property
    def spec(self) -> _synth.SynthSpec:
        """The digit-placement parameters of this config (internal to the generator)."""
        return _synth.SynthSpec(
            canvas_size=self.canvas_size,
            channels=self.channels,
            min_digits=self.min_digits,
            max_digits=self.max_digits,
            num_clutter=self.num_clutter,
            canvas_width=self.canvas_width,
            reading=self.reading,
        )

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of the images in pixels."""
        return self.canvas_size, self.spec.width

    @property
    def sequence_length(self) -> int | None:
        """Length of ``sequence`` (max_digits + 1: the digits and END), or None without reading."""
        return self.max_digits + 1 if self.reading else None

    @property
    def num_examples(self) -> dict[str, int]:
        """Number of examples per split, a dict mapping "train" to num_train and "test" to num_test."""
        return {"train": self.num_train, "test": self.num_test}


BUILDER_CONFIGS = [
    ClutteredDigitsConfig(
        name="default",
        description="Classification: one digit + 6 clutter fragments on 64x64, 50k train / 10k test.",
    ),
    ClutteredDigitsConfig(
        name="detection",
        description="Detection / segmentation: 1-3 digits + clutter on 64x64, 50k train / 10k test.",
        max_digits=3,
    ),
    ClutteredDigitsConfig(
        name="tiny",
        description="For tests: one digit + 2 fragments on 32x32, 256 train / 64 test.",
        canvas_size=32,
        num_clutter=2,
        num_train=256,
        num_test=64,
    ),
    ClutteredDigitsConfig(
        name="tiny_detection",
        description="For tests: 1-3 digits + 2 fragments on 32x32, 256 train / 64 test.",
        canvas_size=32,
        max_digits=3,
        num_clutter=2,
        num_train=256,
        num_test=64,
    ),
    ClutteredDigitsConfig(
        name="reading",
        description="Reading: 1-4 digits left to right + 8 clutter fragments on 64x128 (H x W), "
        "50k train / 10k test.",
        canvas_width=128,
        max_digits=4,
        num_clutter=8,
        reading=True,
    ),
    ClutteredDigitsConfig(
        name="tiny_reading",
        description="For tests: 1-4 digits left to right + 2 fragments on 32x64, 256 train / 64 test.",
        canvas_size=32,
        canvas_width=64,
        max_digits=4,
        num_clutter=2,
        num_train=256,
        num_test=64,
        reading=True,
    ),
]


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of cluttered_digits (see the module docstring for the features).

    Nothing is downloaded: the examples are generated from the digits bundled with scikit-learn. Build
    with ``file_format="array_record"`` (`prepare` does), which `tfds.data_source` and the pipelines read.

    Examples:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as data_dir:  # no building: the builder's metadata only
      ...     builder = ClutteredDigits(config="tiny", data_dir=data_dir)
      ...     builder.info.features["image"].shape, builder.info.features["mask"].shape, builder.is_prepared()
      ((32, 32, 1), (32, 32), False)
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup probes `importlib_resources`, which is not a dependency; the file is enough.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        height, width = cfg.image_hw
        zlib = tfds.features.Encoding.ZLIB
        features = {
            "image": tfds.features.Tensor(shape=(height, width, cfg.channels), dtype=np.uint8, encoding=zlib),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "box_labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "source_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "mask": tfds.features.Tensor(shape=(height, width), dtype=np.uint8, encoding=zlib),
        }
        if cfg.reading:
            features["sequence"] = tfds.features.Tensor(shape=(cfg.sequence_length,), dtype=np.int64)
        features = tfds.features.FeaturesDict(features)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _log_download_bytes(
        self,
    ) -> None:  # tfds would say "Downloading and preparing": nothing is downloaded
        counts = self.builder_config.num_examples
        print(
            f"Building {self.name}/{self.builder_config.name} locally (no download): "
            f"{sum(counts.values()):,} examples into {self.data_dir} ...",
            flush=True,
        )

    def _log_download_done(self) -> None:
        print(
            f"Built {self.name}/{self.builder_config.name} in {self.data_dir}; later runs reuse it.",
            flush=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated from data shipped inside scikit-learn
        return {split: self._generate_examples(split) for split in _SPLIT_CODES}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        pool = _synth.split_identities(cfg.seed)[split]
        total = cfg.num_examples[split]
        for chunk, start in enumerate(range(0, total, CHUNK)):
            rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], chunk])
            examples = _synth.synthesize(rng, pool, min(CHUNK, total - start), cfg.spec)
            for offset, example in enumerate(examples):
                yield start + offset, example


def prepare(config: str | ClutteredDigitsConfig = "default", data_dir: str | None = None) -> ClutteredDigits:
    """Build a cluttered_digits config into ``data_dir`` once (with a progress bar) and return its builder.

    A config already built there is reused without reading it again. Several processes may call this at
    once (pytest-xdist workers, hosts of one run): a file lock lets one build while the others wait.

    Args:
      config: a name from `BUILDER_CONFIGS` (``"default"``, ``"detection"``, ``"tiny"``,
        ``"tiny_detection"``, ``"reading"``, ``"tiny_reading"``) or a `ClutteredDigitsConfig` of your own
        (e.g. a 96x96 canvas).
      data_dir: where to build (None: `default_data_dir`).

    Returns:
      The prepared `ClutteredDigits` builder.

    Raises:
      ValueError: ``config`` is a name that no built-in config has.

    Examples:
      >>> import tempfile
      >>> tmp = tempfile.TemporaryDirectory()
      >>> small = ClutteredDigitsConfig(name="small", canvas_size=32, num_clutter=2, num_train=16, num_test=8)
      >>> builder = prepare(small, data_dir=tmp.name)
      Building cluttered_digits/small locally (no download): 24 examples into ...
      Built cluttered_digits/small in ...; later runs reuse it.
      >>> builder.info.splits["train"].num_examples, builder.is_prepared()
      (16, True)
      >>> tmp.cleanup()
    """
    names = [c.name for c in BUILDER_CONFIGS]
    if isinstance(config, str) and config not in names:
        raise ValueError(f"unknown cluttered_digits config {config!r}; known: {names}")
    data_dir = data_dir or default_data_dir()
    builder = ClutteredDigits(config=config, data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    lock_path = os.path.join(data_dir, f".cluttered_digits-{builder.builder_config.name}.lock")
    os.makedirs(data_dir, exist_ok=True)
    with open(lock_path, "w") as lock:  # several processes (pytest-xdist, hosts) may ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = ClutteredDigits(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
    return builder

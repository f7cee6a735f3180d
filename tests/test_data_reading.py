"""cluttered_digits reading configs: digits left to right without overlap, the digit string as `sequence`
(digits, END = 10, PAD = 11), the split by identity, the pipeline's reading batches and their checks; the
existing configs' examples are byte for byte what they were before the reading layout was added."""

import dataclasses
import hashlib
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_jax.data import ClutteredDigitsConfig, _synth, dataset_info, make_pipeline, prepare
from attn_jax.data import cluttered_digits as cd
from attn_jax.data import memory_source as ms
from attn_jax.data.sources import get_adapter
from attn_jax.data.validate import example_problem, first_bad_record

TINY_READING = "cluttered_digits/tiny_reading"
END, PAD = 10, 11

# sha256 of the first 3 examples (keys sorted; name, dtype, shape and bytes of each value) of each split of
# each existing config, and of the whole tiny_detection test split, computed at commit 3461c73, before the
# reading layout and the canvas width were added.
BEFORE = {
    ("default", "train"): "ab34b63433e7c558725ae8e0b42a6e8a91b24a8bdf349f016de30a07e64ba711",
    ("default", "test"): "4b503e17e5d10eb6ee2201b6a029910aef097045a20f2028270062c8e79f73ba",
    ("detection", "train"): "832d50f036f50ac2df9f6458a3d280755963d256b5661ad485f6737fa0bf6393",
    ("detection", "test"): "473f9cd3e1827a3366581003a1dee262237a33496979f3167d76e561e80d6ac8",
    ("tiny", "train"): "6cb7235d05aa5e4f81156ec4063dd1f555914a954b333a85cb463887170ca34a",
    ("tiny", "test"): "50c9b7e2672b2f5cc5a7471be319b0c39e22eb31647b195eaeec3c12e1f29f26",
    ("tiny_detection", "train"): "66df416f5e8438aa874c3036e6451bd0dfd3c19c98e8b1c0cb74c24b7d9eece2",
    ("tiny_detection", "test"): "fc79d8a36a7667f19b389591a132e861a8346104e3990b4f64dd687948d4e3e6",
}
TINY_DETECTION_TEST_SPLIT = "96161398242393c54ae9fda2b3c5ce770a985c42ebe227b4157ac0a16b395acb"


def _digest(examples) -> str:
    h = hashlib.sha256()
    for ex in examples:
        for key in sorted(ex):
            value = np.asarray(ex[key])
            h.update(key.encode())
            h.update(str(value.dtype).encode())
            h.update(str(value.shape).encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name, split", sorted(BEFORE))
def test_existing_configs_make_the_same_examples_as_before(tmp_path, name, split):
    builder = cd.ClutteredDigits(config=name, data_dir=str(tmp_path))  # generates; builds nothing
    examples = [ex for _, ex in itertools.islice(builder._generate_examples(split), 3)]
    assert _digest(examples) == BEFORE[name, split]
    assert (
        "sequence" not in builder.info.features
        and builder.info.features["image"].shape[0] == (builder.info.features["image"].shape[1])
    )


def test_a_whole_existing_split_is_unchanged(tmp_path):
    builder = cd.ClutteredDigits(config="tiny_detection", data_dir=str(tmp_path))
    assert _digest([ex for _, ex in builder._generate_examples("test")]) == TINY_DETECTION_TEST_SPLIT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    prepare("tiny_reading", path)
    return path


@pytest.fixture(scope="module")
def records(data_dir):
    source = tfds.data_source(TINY_READING, data_dir=data_dir, download=False)
    return {split: [source[split][i] for i in range(len(source[split]))] for split in ("train", "test")}


def _check_reading(ex, height, width, max_digits):
    """Shapes, the sequence's layout, reading order, no overlap along x, tight boxes of the right class."""
    k = len(ex["boxes"])
    assert 1 <= k <= max_digits
    assert ex["image"].shape[:2] == (height, width) and ex["mask"].shape == (height, width)
    sequence = np.asarray(ex["sequence"])
    assert sequence.shape == (max_digits + 1,) and sequence.dtype == np.int64
    np.testing.assert_array_equal(sequence[:k], ex["box_labels"])
    assert sequence[k] == END and (sequence[k + 1 :] == PAD).all()
    assert int(ex["label"]) == int(sequence[0])
    boxes = np.asarray(ex["boxes"]) * [height, width, height, width]
    assert (boxes[1:, 1] >= boxes[:-1, 3]).all(), boxes  # left to right, apart along x
    mask = ex["mask"]
    for (y0, x0, y1, x1), label in zip(np.round(boxes).astype(int), ex["box_labels"]):
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        inside = mask[y0:y1, x0:x1] == label + 1
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    return k


def test_tiny_reading_examples(records):
    cfg = cd.ClutteredDigits.builder_configs["tiny_reading"]
    assert cfg.image_hw == (32, 64) and cfg.sequence_length == 5
    counts = [_check_reading(ex, 32, 64, 4) for ex in records["train"]]
    assert len(records["train"]) == 256 and len(records["test"]) == 64
    assert set(counts) == {1, 2, 3, 4}


def test_reading_config_at_full_size():
    cfg = cd.ClutteredDigits.builder_configs["reading"]
    assert (
        cfg.image_hw == (64, 128)
        and cfg.max_digits == 4
        and cfg.num_examples == {"train": 50000, "test": 10000}
    )
    pool = _synth.split_identities(cfg.seed)["test"]
    for ex in _synth.synthesize(np.random.default_rng(0), pool, 64, cfg.spec):
        _check_reading(ex, 64, 128, 4)
        assert set(ex["source_ids"]) <= set(pool)


def test_reading_split_by_digit_identity(records):
    ids = {split: set(np.concatenate([ex["source_ids"] for ex in records[split]])) for split in records}
    pools = _synth.split_identities(0)
    assert ids["train"] <= set(pools["train"]) and ids["test"] <= set(pools["test"])
    assert not ids["train"] & ids["test"]


def test_reading_needs_a_canvas_wide_enough():
    with pytest.raises(ValueError, match="max_digits=4 digits of up to 28 px need a canvas_width >= 112"):
        _synth.SynthSpec(canvas_size=64, canvas_width=100, max_digits=4, reading=True)
    with pytest.raises(ValueError, match=r"max_digits must be <= 4 \(or reading=True\)"):
        _synth.SynthSpec(max_digits=5)
    with pytest.raises(ValueError, match="canvas_width must be >= 16"):
        _synth.SynthSpec(canvas_width=8)
    five = _synth.SynthSpec(canvas_size=64, canvas_width=160, min_digits=5, max_digits=5, reading=True)
    (ex,) = _synth.synthesize(np.random.default_rng(1), _synth.split_identities(0)["train"], 1, five)
    assert _check_reading(ex, 64, 160, 5) == 5


def test_a_wide_canvas_without_reading_keeps_the_scattered_layout(tmp_path):
    wide = ClutteredDigitsConfig(name="wide", canvas_width=96, max_digits=3, num_train=8, num_test=4)
    source = prepare(wide, str(tmp_path)).as_data_source(split="train")
    assert source[0]["image"].shape == (64, 96, 1) and "sequence" not in source[0]
    with pytest.raises(ValueError, match="does not serve task 'reading'"):
        get_adapter(wide, task="reading")


def test_reading_metadata():
    meta = dataset_info(TINY_READING, task="reading")
    assert (meta.num_classes, meta.image_shape) == (11, (32, 64, 1))
    assert get_adapter(TINY_READING).augment == ()  # a crop could cut off a digit the sequence names
    with pytest.raises(ValueError, match="does not serve task 'reading'"):
        get_adapter("cluttered_digits/tiny", task="reading")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("image_size", [None, (32, 48)])  # column reads; record reads with a resize
def test_reading_batches(data_dir, records, train, image_size):
    loader = make_pipeline(TINY_READING, "test", batch_size=16, task="reading", train=train, seed=1,
                           data_dir=data_dir, max_boxes=5, image_size=image_size, num_devices=1,
                           shard_index=0, shard_count=1)  # fmt: skip
    batch = next(iter(loader))
    h, w = image_size or (32, 64)
    expected = {
        "image": ((16, h, w, 1), np.float32),
        "label": ((16,), np.int32),
        "sequence": ((16, 5), np.int32),
        "boxes": ((16, 5, 4), np.float32),
        "box_labels": ((16, 5), np.int32),
        "box_valid": ((16, 5), np.bool_),
    } | ({} if train else {"valid": ((16,), np.bool_)})
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    sequence, valid = batch["sequence"], batch["box_valid"]
    lengths = valid.sum(1)
    assert (sequence[np.arange(16), lengths] == END).all()
    np.testing.assert_array_equal(np.where(valid, sequence[:, :5], 0), batch["box_labels"])
    if not train:  # evaluation order: the split's first 16 records
        np.testing.assert_array_equal(sequence, [ex["sequence"] for ex in records["test"][:16]])


def test_damaged_sequences_are_errors_naming_the_example(records):
    ex = {k: np.asarray(v) for k, v in records["test"][3].items()}
    assert example_problem(ex, "reading", 11) is None
    k = len(ex["boxes"])
    for damage in (
        lambda s: s.__setitem__(k, PAD),  # no END
        lambda s: s.__setitem__(0, (s[0] + 1) % 10),  # a digit that is not the box's
        lambda s: s.__setitem__(k, 12),  # out of range
    ):
        bad = dict(ex, sequence=ex["sequence"].copy())
        damage(bad["sequence"])
        assert "sequence" in example_problem(bad, "reading", 11)
    assert "no 'sequence'" in example_problem({k: v for k, v in ex.items() if k != "sequence"}, "reading", 11)

    rows = [dict(r) for r in records["test"][:8]]
    source = ms.MemorySource(rows)
    assert first_bad_record(source, "reading", 11) is None
    rows[5] = dict(rows[5], sequence=np.roll(rows[5]["sequence"], 1))
    assert first_bad_record(ms.MemorySource(rows), "reading", 11) == 5


def test_custom_reading_config_builds_and_reads(tmp_path):
    base = cd.ClutteredDigits.builder_configs["tiny_reading"]
    small = dataclasses.replace(base, name="reading_small", num_train=16, num_test=8, max_digits=3)
    batch = next(iter(make_pipeline(small, "train", batch_size=8, task="reading", data_dir=str(tmp_path),
                                    num_devices=1, shard_index=0, shard_count=1)))  # fmt: skip
    assert batch["sequence"].shape == (8, 4) and batch["image"].shape == (8, 32, 64, 1)

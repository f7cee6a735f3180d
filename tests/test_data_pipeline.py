"""grain pipelines: batch format per task, sharding, errors, exact resume, transforms, real adapters."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_jax.data import ClutteredDigitsConfig, dataset_info, make_pipeline, prepare
from attn_jax.data import transforms as T
from attn_jax.data.sources import get_adapter

TINY = "cluttered_digits/tiny"
TINY_DET = "cluttered_digits/tiny_detection"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    prepare("tiny", path)
    prepare("tiny_detection", path)
    return path


def _pipe(data_dir, dataset=TINY_DET, split="train", **kw):
    kw = {"batch_size": 16, "seed": 3, "shard_index": 0, "shard_count": 1, **kw}
    return make_pipeline(dataset, split, data_dir=data_dir, **kw)


def _equal_batches(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


EXPECTED = {
    "classification": {"image": ((16, 32, 32, 1), np.float32), "label": ((16,), np.int32)},
    "detection": {
        "image": ((16, 32, 32, 1), np.float32),
        "label": ((16,), np.int32),
        "boxes": ((16, 5, 4), np.float32),
        "box_labels": ((16, 5), np.int32),
        "box_valid": ((16, 5), np.bool_),
    },
    "segmentation": {
        "image": ((16, 32, 32, 1), np.float32),
        "label": ((16,), np.int32),
        "mask": ((16, 32, 32), np.int32),
    },
}


@pytest.mark.parametrize("task", list(EXPECTED))
@pytest.mark.parametrize("train", [True, False])
def test_batch_keys_shapes_dtypes(data_dir, task, train):
    batch = next(iter(_pipe(data_dir, task=task, train=train, max_boxes=5)))
    expected = dict(EXPECTED[task])
    if not train:
        expected["valid"] = ((16,), np.bool_)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert abs(float(batch["image"].mean())) < 2.0 and batch["image"].std() > 0.1
    if task == "detection":
        assert batch["box_valid"][:, 0].all() and (batch["box_valid"].sum(1) <= 3).all()
        assert (batch["boxes"][~batch["box_valid"]] == 0).all()
        if not train:  # (training crops may clip the main digit's box away)
            assert (batch["box_labels"][:, 0] == batch["label"]).all()
    if task == "segmentation":
        assert batch["mask"].min() >= 0 and batch["mask"].max() <= 10


def test_eval_is_one_ordered_epoch_with_padded_last_batch(data_dir):
    source = tfds.data_source(TINY, split="test", data_dir=data_dir, download=False)
    batches = list(_pipe(data_dir, TINY, "test", batch_size=24))
    assert len(batches) == 3 and all(len(b["label"]) == 24 for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[valid]
    assert valid.sum() == 64 == len(source)
    np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(64)])


def test_shards_split_the_data_and_the_batch(data_dir):
    parts = [
        list(_pipe(data_dir, TINY, "test", batch_size=16, shard_index=i, shard_count=2)) for i in range(2)
    ]
    assert all(len(b["label"]) == 8 for part in parts for b in part)
    images = [np.concatenate([b["image"][b["valid"]] for b in part]) for part in parts]
    assert len(images[0]) == len(images[1]) == 32
    flat = [im.reshape(len(im), -1) for im in images]
    assert not any((flat[0] == row).all(1).any() for row in flat[1])


def test_resumed_iterator_equals_uninterrupted(data_dir):
    loader = _pipe(data_dir, task="detection", train=True)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = it.get_state()
    uninterrupted = [next(it) for _ in range(20)]  # crosses an epoch boundary (256 / 16 = 16 per epoch)
    fresh = iter(_pipe(data_dir, task="detection", train=True))
    assert not np.array_equal(next(fresh)["image"], uninterrupted[0]["image"])
    resumed = iter(_pipe(data_dir, task="detection", train=True))
    resumed.set_state(state)
    for a, b in zip(uninterrupted, itertools.islice(resumed, 20)):
        _equal_batches(a, b)


def test_training_order_depends_on_seed_and_epoch(data_dir):
    a = list(itertools.islice(_pipe(data_dir, train=True, seed=0), 17))
    b = next(iter(_pipe(data_dir, train=True, seed=1)))
    assert not np.array_equal(a[0]["image"], b["image"])
    assert not np.array_equal(a[0]["image"], a[16]["image"])  # epoch 2 reshuffled and re-augmented


def _epoch_order(loader, num_batches):
    """The examples of num_batches batches, each identified by its (unaugmented) image bytes."""
    batches = itertools.islice(loader, num_batches)
    return [image.tobytes() for batch in batches for image in batch["image"]]


def test_training_set_is_reshuffled_without_augmentation(data_dir):
    # Augmentation off, so only the sampler's shuffle can change the order: every training epoch is a
    # permutation of the evaluation order, a different one per epoch and per seed.
    reference = _epoch_order(_pipe(data_dir, train=False), 16)  # 256 examples, fixed order
    assert len(set(reference)) == len(reference) == 256
    orders = {}
    for seed in (0, 1):
        both = _epoch_order(_pipe(data_dir, train=True, seed=seed, augment=()), 32)
        orders[seed] = both[:256], both[256:]
    for seed, (first, second) in orders.items():
        assert sorted(first) == sorted(second) == sorted(reference), f"seed {seed}: not a permutation"
        assert first != reference and second != reference, f"seed {seed}: training order not shuffled"
        assert first != second, f"seed {seed}: epoch 2 repeats epoch 1's order"
    assert orders[0][0] != orders[1][0], "seeds 0 and 1 give the same order"


def test_batch_must_divide_devices_and_processes(data_dir):
    with pytest.raises(ValueError, match=r"batch_size=12 .*device count \(8\)"):
        make_pipeline(TINY, "train", batch_size=12, data_dir=data_dir)
    with pytest.raises(ValueError, match=r"process count \(3\)"):
        _pipe(data_dir, batch_size=16, shard_index=0, shard_count=3, num_devices=1)
    with pytest.raises(ValueError, match="shard_index"):
        _pipe(data_dir, shard_index=2, shard_count=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"task": "captioning"}, "unknown task 'captioning'"),
        ({"dataset": "mnist", "task": "detection"}, "does not serve task 'detection'"),
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"augment": ("rotate",)}, "unknown augment"),
        ({"max_boxes": 0}, "max_boxes"),
    ],
)
def test_bad_arguments_raise_value_error(data_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _pipe(data_dir, **kwargs)


def test_missing_real_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"attn_jax\[tf\].*\n.*tfds build mnist"):
        make_pipeline("mnist", "train", batch_size=8, data_dir=str(tmp_path), num_devices=1)


def test_dataset_info():
    meta = dataset_info("cluttered_digits/detection", task="segmentation")
    assert (meta.num_classes, meta.image_shape, meta.num_examples) == (
        11,
        (64, 64, 1),
        {"train": 50_000, "test": 10_000},
    )
    assert dataset_info("cifar10").num_classes == 10
    assert dataset_info("voc/2007", task="detection", image_size=96).image_shape == (96, 96, 3)


def _check_boxes(batch, exact=None):
    """Every mask pixel lies in a valid box of its class; boxes marked `exact` (b, K) are also tight
    (each edge touches a pixel of their class). Boxes clipped by a crop are only checked for coverage."""
    exact = batch["box_valid"] if exact is None else exact & batch["box_valid"]
    for i in range(len(batch["image"])):
        mask = batch["mask"][i]
        h, w = mask.shape
        covered = np.zeros_like(mask, bool)
        for box, label, ok, tight in zip(
            batch["boxes"][i], batch["box_labels"][i], batch["box_valid"][i], exact[i]
        ):
            if not ok:
                continue
            y0, x0, y1, x1 = np.round(box * np.array([h, w, h, w])).astype(int)
            inside = mask[y0:y1, x0:x1] == label + 1
            covered[y0:y1, x0:x1] |= inside
            if tight:
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        np.testing.assert_array_equal(covered, mask > 0)


@pytest.fixture(scope="module")
def raw_batch(data_dir):
    """8 tiny_detection test examples with both boxes (padded to 4) and masks, stacked."""
    source = tfds.data_source(TINY_DET, split="test", data_dir=data_dir, download=False)
    canonicalize = get_adapter(TINY_DET).canonicalize
    boxes, masks = T.Prepare(canonicalize, "detection", None, 4), T.Prepare(canonicalize, "segmentation")
    examples = [{**boxes.map(source[i]), "mask": masks.map(source[i])["mask"]} for i in range(8)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


@settings(max_examples=10, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 16), min_size=16, max_size=16),
    flips=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_crop_and_flip_move_boxes_with_masks(raw_batch, offsets, flips):
    _check_boxes(raw_batch)
    tops, lefts = np.array(offsets[:8]), np.array(offsets[8:])
    cropped = T.crop_batch(raw_batch, tops, lefts, pad=8)
    assert cropped["image"].shape == raw_batch["image"].shape
    shift = np.stack([tops, lefts, tops, lefts], 1)[:, None, :] - 8
    moved = raw_batch["boxes"] * 32 - shift
    unclipped = ((moved >= 0) & (moved <= 32)).all(-1)
    _check_boxes(cropped, unclipped)
    _check_boxes(T.flip_batch(cropped, np.array(flips)), unclipped)


def test_crop_takes_each_examples_own_window_of_the_zero_padded_image():
    rng = np.random.default_rng(3)
    image = rng.integers(1, 255, (5, 6, 7, 2), dtype=np.uint8)
    mask = rng.integers(1, 9, (5, 6, 7)).astype(np.int32)
    tops, lefts, pad = np.array([0, 4, 2, 1, 3]), np.array([4, 0, 2, 3, 1]), 2
    cropped = T.crop_batch({"image": image, "mask": mask}, tops, lefts, pad)
    for i, y, x in np.ndindex(5, 6, 7):  # output pixel (y, x) is input pixel (y + top - pad, x + left - pad)
        sy, sx = y + tops[i] - pad, x + lefts[i] - pad
        inside = 0 <= sy < 6 and 0 <= sx < 7
        np.testing.assert_array_equal(cropped["image"][i, y, x], image[i, sy, sx] if inside else 0)
        assert cropped["mask"][i, y, x] == (mask[i, sy, sx] if inside else 0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), zoom=st.floats(0.0, 0.3), degrees=st.floats(0.0, 30.0))
def test_affine_moves_boxes_with_masks(raw_batch, seed, zoom, degrees):
    """After a random zoom and rotation every mask pixel of an object still lies inside its box."""
    maps = T.random_affine_maps(np.random.default_rng(seed), 8, zoom, degrees)
    warped = T.affine_batch(raw_batch, maps)
    assert {k: (v.shape, v.dtype) for k, v in warped.items()} == {
        k: (v.shape, v.dtype) for k, v in raw_batch.items()
    }
    _check_boxes(warped, np.zeros_like(raw_batch["box_valid"]))  # coverage only: rotated boxes grow


def test_affine_identity_and_quarter_turn_are_exact(raw_batch):
    eye = np.tile(np.eye(2), (8, 1, 1))
    _equal_batches(T.affine_batch(raw_batch, eye), raw_batch)
    # (row, col) -> (-col, row) about the centre
    quarter = np.tile(np.array([[0.0, -1.0], [1.0, 0.0]]), (8, 1, 1))
    turned = T.affine_batch(raw_batch, quarter)
    np.testing.assert_array_equal(turned["image"], np.rot90(raw_batch["image"], 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned["mask"], np.rot90(raw_batch["mask"], 1, axes=(1, 2)))
    _check_boxes(turned)  # a quarter turn keeps tight boxes tight
    zoomed = T.affine_batch(raw_batch, eye * 4.0)  # objects off-centre leave the image: boxes invalidated
    assert zoomed["box_valid"].sum() < raw_batch["box_valid"].sum()
    assert not zoomed["boxes"][~zoomed["box_valid"]].any()
    _check_boxes(zoomed, np.zeros_like(raw_batch["box_valid"]))


def test_affine_augmentation_in_the_pipeline(data_dir):
    plain = next(iter(_pipe(data_dir, task="segmentation", train=True, augment=())))
    warped = next(iter(_pipe(data_dir, task="segmentation", train=True, augment=("affine",))))
    np.testing.assert_array_equal(plain["label"], warped["label"])  # same records, same order
    assert not np.array_equal(plain["image"], warped["image"])
    assert warped["image"].shape == plain["image"].shape and warped["mask"].shape == plain["mask"].shape


def test_flip_twice_is_identity_and_zero_crop_is_identity(raw_batch):
    flips = np.array([True, False] * 4)
    _equal_batches(T.flip_batch(T.flip_batch(raw_batch, flips), flips), raw_batch)
    _equal_batches(T.crop_batch(raw_batch, np.full(8, 3), np.full(8, 3), pad=3), raw_batch)


def test_resize_and_pad_boxes():
    ex = {"image": np.arange(48, dtype=np.uint8).reshape(4, 4, 3), "mask": np.eye(4, dtype=np.uint8)}
    out = T.resize_example(ex, 8, 6)
    assert out["image"].shape == (8, 6, 3) and out["mask"].shape == (8, 6)
    assert set(np.unique(out["mask"])) == {0, 1}
    boxes, labels, valid = T.pad_boxes(np.ones((3, 4)), np.array([1, 2, 3]), 2)
    assert boxes.shape == (2, 4) and labels.tolist() == [1, 2] and valid.tolist() == [True, True]
    boxes, labels, valid = T.pad_boxes(np.zeros((0, 4)), np.zeros((0,)), 3)
    assert valid.tolist() == [False] * 3 and boxes.shape == (3, 4)
    with pytest.raises(ValueError, match=r"'mask' must be \(H, W\)"):
        T.resize_example({"image": ex["image"], "mask": np.zeros((3, 3))}, 8, 8)


REAL = [
    ("mnist", "classification", None, {"image": (8, 28, 28, 1)}),
    ("cifar10", "classification", None, {"image": (8, 32, 32, 3)}),
    ("oxford_iiit_pet", "classification", 40, {"image": (8, 40, 40, 3)}),
    ("oxford_iiit_pet", "segmentation", 40, {"image": (8, 40, 40, 3), "mask": (8, 40, 40)}),
    ("voc/2007", "detection", 48, {"image": (8, 48, 48, 3), "boxes": (8, 6, 4), "box_valid": (8, 6)}),
]


@pytest.mark.parametrize("name, task, size, shapes", REAL, ids=[f"{r[0]}-{r[1]}" for r in REAL])
@pytest.mark.parametrize("train", [True, False])
def test_real_dataset_adapters_with_mock_data(tmp_path, name, task, size, shapes, train):
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        loader = make_pipeline(
            name, "train", batch_size=8, task=task, train=train, image_size=size, max_boxes=6,
            data_dir=str(tmp_path), num_devices=1, shard_index=0, shard_count=1,
        )  # fmt: skip
        batch = next(iter(loader))
    for key, shape in shapes.items():
        assert batch[key].shape == shape, key
    assert np.isfinite(batch["image"]).all() and batch["label"].dtype == np.int32
    num_classes = dataset_info(name, task=task).num_classes
    if task == "segmentation":
        assert batch["mask"].min() >= 0 and batch["mask"].max() < num_classes
    if task == "detection":
        boxes = batch["boxes"][batch["box_valid"]]
        assert (boxes[:, :2] <= boxes[:, 2:]).all() and (boxes >= 0).all() and (boxes <= 1).all()
        assert (batch["box_labels"] < num_classes).all()


def test_varying_size_dataset_needs_image_size(tmp_path):
    with pytest.raises(ValueError, match="oxford_iiit_pet.*varying size: pass image_size"):
        make_pipeline("oxford_iiit_pet", "train", batch_size=8, data_dir=str(tmp_path), num_devices=1)


def test_custom_config_rgb_canvas(tmp_path):
    cfg = ClutteredDigitsConfig(
        name="rgb48", canvas_size=48, channels=3, max_digits=4, num_train=40, num_test=8
    )
    loader = make_pipeline(
        cfg, "train", batch_size=8, task="segmentation", train=True,
        data_dir=str(tmp_path), num_devices=1, shard_index=0, shard_count=1,
    )  # fmt: skip
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 48, 48, 3) and batch["mask"].shape == (8, 48, 48)
    assert batch["mask"].max() > 0
    assert dataset_info(cfg, task="detection").num_examples == {"train": 40, "test": 8}

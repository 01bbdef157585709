"""Image data: MNIST-5k, the idx parser behind Fashion-MNIST, and the seeded split plan."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from common.data.demo_images import (
    demo_image_splits,
    load_fashion_mnist,
    load_mnist5k,
    read_idx,
    split_images,
)
from common.data.partitioning import SplitSettings
from common.run_config import ConfigError, RunConfig

SPLIT = {"test_fraction": 0.2, "label_fraction": 0.05, "num_clients": 5, "dirichlet_alpha": 0.5}


def _write_idx(path, array: np.ndarray, type_byte: int, compress: bool = False) -> None:
    """An idx file written from the format spec: 0,0,type,ndim; big-endian dims; data."""
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as handle:
        handle.write(data)


def _indexed_images(n: int) -> np.ndarray:
    """Images whose first pixel encodes their index exactly (so splits can be traced back)."""
    images = np.zeros((n, 1, 28, 28), dtype=np.float32)
    images[:, 0, 0, 0] = np.arange(n) / 8192.0
    return images


def _indices(images: np.ndarray) -> np.ndarray:
    return np.rint(images[:, 0, 0, 0] * 8192.0).astype(int)


def test_mnist5k_shapes_and_balance():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_bytes_and_big_endian_ints(tmp_path, compress):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    counts = np.array([1, -2, 70_000], dtype=np.int32)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"p{suffix}", pixels, 0x08, compress)
    _write_idx(tmp_path / f"c{suffix}", counts, 0x0C, compress)
    assert np.array_equal(read_idx(tmp_path / f"p{suffix}"), pixels)
    got = read_idx(tmp_path / f"c{suffix}")
    assert np.array_equal(got, counts) and got.dtype.isnative


def test_read_idx_rejects_bad_magic_and_wrong_size(tmp_path):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "png")
    _write_idx(tmp_path / "short", np.zeros((2, 5), dtype=np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="9 data bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loads_debian_layout_and_explains_absence(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 3), ("t10k", 2)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08, compress=True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz",
                   np.arange(n, dtype=np.uint8), 0x08, compress=True)
    images, labels = load_fashion_mnist(folder=tmp_path)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels.tolist() == [0, 1, 2, 0, 1] and labels.dtype == np.int64
    assert load_fashion_mnist("test", folder=tmp_path)[0].shape == (2, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(folder=tmp_path / "absent")


def test_splits_are_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    images = _indexed_images(len(labels))
    a = split_images(images, labels, SplitSettings(seed=1, **SPLIT))
    parts = [a.test_images, a.labeled_images, *a.client_images]
    used = np.concatenate([_indices(p) for p in parts])
    assert sorted(used.tolist()) == list(range(len(labels)))  # disjoint and complete
    assert np.array_equal(labels[_indices(a.labeled_images)], a.labeled_labels)
    assert np.array_equal(labels[_indices(a.test_images)], a.test_labels)
    assert len(a.test_images) == 200 and len(a.labeled_images) == 40
    assert set(a.labeled_labels.tolist()) == set(range(10))  # every class when possible
    b = split_images(images, labels, SplitSettings(seed=1, **SPLIT))
    c = split_images(images, labels, SplitSettings(seed=2, **SPLIT))
    assert all(np.array_equal(x, y) for x, y in zip(a.client_images, b.client_images,
                                                    strict=True))
    assert not np.array_equal(a.labeled_images, c.labeled_images)
    with pytest.raises(ValueError):
        a.client_images[0][0, 0, 0, 0] = 1.0  # shared cached arrays are read-only


def test_small_alpha_partitions_are_non_iid():
    labels = np.repeat(np.arange(10), 200)
    images = _indexed_images(len(labels))

    def skew(alpha: float) -> float:
        splits = split_images(
            images, labels, SplitSettings(seed=0, **{**SPLIT, "dirichlet_alpha": alpha}))
        shares = [np.bincount(labels[_indices(c)], minlength=10).max() / len(c)
                  for c in splits.client_images]
        return float(np.mean(shares))

    uniform = skew(100.0)
    assert uniform < 0.15
    assert skew(0.1) > 2 * uniform


def test_mnist5k_demo_plan_is_cached_and_has_every_class_labeled():
    config = RunConfig(num_clients=4, label_fraction=0.01)
    splits = demo_image_splits(config)
    assert demo_image_splits(config.replace(num_rounds=7)) is splits
    assert set(splits.labeled_labels.tolist()) == set(range(10))  # 4 labeled per class
    assert splits.label_names == [str(d) for d in range(10)]
    total = len(splits.test_images) + len(splits.labeled_images) + sum(
        len(c) for c in splits.client_images)
    assert total == 5000


def test_impossible_splits_name_the_setting():
    labels = np.repeat(np.arange(10), 20)
    images = _indexed_images(len(labels))
    with pytest.raises(ConfigError) as err:
        split_images(images, labels,
                          SplitSettings(seed=0, **{**SPLIT, "num_clients": 100}))
    assert err.value.key == "num-clients"
    with pytest.raises(ConfigError) as err:
        split_images(images, labels,
                          SplitSettings(seed=0, **{**SPLIT, "label_fraction": 0.001}))
    assert err.value.key == "label-fraction"

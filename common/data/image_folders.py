"""Image records of a node's data folder (for image tasks); `load_image_folder`.

Accepted files (folder rules as in `common/data/data_folders.py`):
* image files `.png .jpg .jpeg .bmp .pgm .gif`, one record each, read with Pillow. Grayscale
  (modes 1, L, LA, 16-bit I;16, and palette images whose palette is all grays, as Pillow opens
  gray GIFs) gives C=1; colour (RGB, RGBA, other palettes, CMYK, YCbCr) gives C=3. Alpha is
  dropped; only the first frame of an animated GIF is used. 8-bit values are scaled by 1/255,
  16-bit by 1/65535.
* `.npy` arrays, many records each, loaded with allow_pickle=False: [N, H, W] (C=1),
  [N, H, W, C] or [N, C, H, W] with C in {1, 3}. uint8 is scaled by 1/255; float arrays must be
  finite and within [0, 1].
Every record of the folder must have the same (C, H, W); the result is float32 [N, C, H, W].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.data_folders import (
    IMAGE_EXTENSIONS,
    DataFolderError,
    FileCount,
    FolderReport,
    data_files,
)

GRAY_MODES = {"L", "I;16", "I;16L", "I;16B"}  # used as they are
TO_GRAY = {"1", "LA"}  # converted to L (LA: alpha dropped)
COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "RGBX"}
CHANNELS = (1, 3)


def load_image_folder(data_dir: str | Path) -> tuple[np.ndarray, FolderReport]:
    """All image records of the folder as float32 [N, C, H, W] in [0, 1], with the report.

    Raises DataFolderError naming the file of the first problem.
    """
    folder, names, skipped = data_files(data_dir, IMAGE_EXTENSIONS)
    blocks: list[np.ndarray] = []
    counts: list[FileCount] = []
    first: tuple[str, tuple[int, int, int]] | None = None  # the file that fixed the shape
    for name in names:
        if Path(name).suffix.lower() == ".npy":
            block = _npy_records(folder / name, name)
        else:
            block = _image_record(folder / name, name)[np.newaxis]
        counts.append(FileCount(name, int(block.shape[0])))
        if block.shape[0] == 0:
            continue
        shape = tuple(int(d) for d in block.shape[1:])
        if first is None:
            first = (name, shape)
        elif shape != first[1]:
            raise DataFolderError(
                "wrong-format", f"{name}: records are {_shape_words(shape)}, but {first[0]} "
                f"has {_shape_words(first[1])}; every image must have the same size and "
                "channels")
        blocks.append(block)
    if first is None:
        raise DataFolderError("no-records", f"data folder {folder} has no images "
                              f"({', '.join(IMAGE_EXTENSIONS)} files)")
    images = np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
    return images, FolderReport("image", str(folder), tuple(counts), shape=first[1],
                                skipped=skipped)


def _shape_words(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{c} channel{'s' if c != 1 else ''} x {h} x {w}"


def _image_record(path: Path, name: str) -> np.ndarray:
    """One image file as float32 [C, H, W] in [0, 1]."""
    # Imported here: Pillow is only needed by image tasks.
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in TO_GRAY or (mode == "P" and _gray_palette(image.getpalette())):
                image = image.convert("L")
            elif mode in COLOUR_MODES:
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except Image.DecompressionBombError:
        raise DataFolderError("oversize-record", f"{name}: image has more pixels than Pillow's "
                              "safety limit") from None
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports truncated/corrupt data as OSError, UnidentifiedImageError (an
        # OSError), SyntaxError or ValueError depending on the decoder.
        why = err.strerror if isinstance(err, OSError) and err.strerror else "corrupt file?"
        raise DataFolderError("unreadable", f"{name}: cannot be read as an image "
                              f"({why})") from None
    if mode not in GRAY_MODES and mode not in TO_GRAY and mode not in COLOUR_MODES:
        raise DataFolderError("wrong-format", f"{name}: image mode {mode} is not supported; "
                              "save it as 8-bit grayscale or RGB")
    # 16-bit grayscale PNGs (common for scans) use the full 0..65535 range.
    scale = 65535.0 if pixels.dtype.itemsize == 2 else 255.0
    pixels = pixels.astype(np.float32) / scale
    if pixels.ndim == 2:
        return pixels[np.newaxis]
    return np.moveaxis(pixels, -1, 0)


def _gray_palette(palette: list[int] | None) -> bool:
    """Whether every palette entry is a gray (r = g = b): Pillow opens gray GIFs as P."""
    if not palette:
        return False
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))


def _npy_records(path: Path, name: str) -> np.ndarray:
    """The records of one .npy file as float32 [N, C, H, W] in [0, 1]."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            # Version 3 only exists for structured dtypes with non-Latin-1 field names.
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
            header_end = handle.tell()
    except OSError as err:
        raise DataFolderError("unreadable", f"{name}: cannot be read "
                              f"({err.strerror or type(err).__name__})") from None
    except (ValueError, SyntaxError, EOFError):
        raise DataFolderError("unreadable", f"{name}: not a valid .npy file") from None
    if dtype.hasobject:
        raise DataFolderError("wrong-format", f"{name}: holds Python objects; save a numeric "
                              "array (uint8, or floats in [0, 1])")
    if dtype != np.uint8 and dtype.kind != "f":
        raise DataFolderError("wrong-format", f"{name}: dtype {dtype} is not supported; use "
                              "uint8 (0..255) or floats in [0, 1]")
    layout = _npy_layout(shape, name)
    # The header's shape must match the file: a forged header claiming a huge array would
    # otherwise make np.load try to allocate it (a MemoryError, not a data error).
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if expected != path.stat().st_size - header_end:
        raise DataFolderError("unreadable", f"{name}: its header describes {expected:,} bytes "
                              f"of data but the file holds {path.stat().st_size - header_end:,} "
                              "(truncated or not a valid .npy file)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise DataFolderError("unreadable", f"{name}: not a valid .npy file (truncated?)") from None
    if array.ndim == 3:
        array = array[:, np.newaxis]
    elif layout == "NHWC":
        array = np.moveaxis(array, -1, 1)
    if dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    # Check before narrowing to float32: a float64 1e300 would become inf, 1+1e-12 would not.
    if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
        raise DataFolderError("wrong-format", f"{name}: float values must be finite and within "
                              "[0, 1]")
    return array.astype(np.float32)


def _npy_layout(shape: tuple[int, ...], name: str) -> str:
    """"NHW", "NHWC" or "NCHW" for an array of this shape."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        last, second = shape[3] in CHANNELS, shape[1] in CHANNELS
        if last and not second:
            return "NHWC"
        if second and not last:
            return "NCHW"
        if last and second:
            raise DataFolderError("wrong-format", f"{name}: shape {list(shape)} is ambiguous "
                                  "(axis 1 and axis 3 could both be channels)")
    raise DataFolderError("wrong-format", f"{name}: array shape {list(shape)} is not an image "
                          "stack; use [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3")

"""Folder-per-class image data sets (``root/<class name>/<image file>``, the layout of UFOP-HVD,
PlantNet exports and torchvision's ``ImageFolder``), read with Pillow (no TensorFlow) and resized
to one size."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def list_image_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """``(file paths, int32 labels, class names)``: classes are the sorted sub-folders of
    ``root`` (or ``classes``, in that order), files sorted by name within each class."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise ValueError(f"{root} has no class sub-folders")
    exts = tuple(e.lower() for e in extensions)
    paths, labels = [], []
    for label, name in enumerate(classes):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"class folder not found: {d}")
        files = sorted(f for f in os.listdir(d) if f.lower().endswith(exts))
        if not files:
            raise ValueError(f"class folder {d} holds no images with extensions {exts}")
        paths += [os.path.join(d, f) for f in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels, np.int32), tuple(classes)


def read_image(path: str, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """One image as uint8 ``(H, W, C)`` resized (bilinear) to ``size = (H, W)``; ``mode`` is a
    Pillow mode, ``"RGB"`` or ``"L"`` (grayscale, C = 1)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: tuple[int, int] = (224, 224),
    mode: str = "RGB",
    classes: Sequence[str] | None = None,
    max_per_class: int | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A folder-per-class data set as ``(uint8 (N, H, W, C), int32 (N,), class names)``, every
    image resized to ``size``; ``max_per_class`` keeps the first files of each class."""
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H >= 1, W >= 1), got {size}")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    paths, labels, names = list_image_folder(root, classes=classes, extensions=extensions)
    if max_per_class is not None:
        if max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        keep = np.concatenate(
            [np.flatnonzero(labels == c)[:max_per_class] for c in range(len(names))]
        )
        paths, labels = [paths[i] for i in keep], labels[keep]
    images = np.stack([read_image(p, tuple(size), mode) for p in paths])
    return images, labels, names

"""Image-folder data sets (one sub-folder per class) and MSTAR's few-shot class split.

MSTAR (the FewSAR benchmark's SAR data) is not downloadable here; users with the data arrange
the chips the usual way, ``root/<CLASS>/<any name>.{png,jpg,jpeg,bmp,tif,tiff}`` with the ten
standard target classes as folder names, and a split file assigning classes to base / val /
novel. Chips of any size are centre-cropped to a square and resized to ``image_size``.
"""

from __future__ import annotations

import json
import os

import numpy as np

MSTAR_CLASSES = (
    "2S1",
    "BMP2",
    "BRDM_2",
    "BTR70",
    "BTR_60",
    "D7",
    "T62",
    "T72",
    "ZIL131",
    "ZSU_23_4",
)

# 5 base (episodic training / pretraining) and 5 novel (5-way test) classes; no validation
# classes are left with 10 classes, so model selection uses the last epoch.
MSTAR_DEFAULT_SPLIT = {
    "base": ("2S1", "BMP2", "BRDM_2", "BTR70", "BTR_60"),
    "val": (),
    "novel": ("D7", "T62", "T72", "ZIL131", "ZSU_23_4"),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def _load_image(path: str, image_size: int | None, grayscale: bool) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    img = img.convert("L" if grayscale else "RGB")
    if image_size is not None:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s)).resize(
            (image_size, image_size), Image.BILINEAR
        )
    a = np.asarray(img, np.uint8)
    return a[..., None] if a.ndim == 2 else a


def load_chip_folder(
    root: str | os.PathLike,
    *,
    classes: tuple[str, ...] | None = None,
    image_size: int | None = 64,
    grayscale: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(images uint8 (N, S, S, C), labels int32 (N,), class_names)`` from ``root/<class>/*``.

    ``classes`` fixes the class order (label ``i`` = ``classes[i]``; every one must exist);
    default: the sorted sub-folders. Files are read in sorted order. Without ``image_size`` all
    images must share one size."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if classes is None:
        classes = tuple(found)
    missing = [c for c in classes if c not in found]
    if missing:
        raise ValueError(f"class folders {missing} not found in {root} (have {found})")
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    images, labels = [], []
    for label, c in enumerate(classes):
        d = os.path.join(root, c)
        files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for f in files:
            images.append(_load_image(os.path.join(d, f), image_size, grayscale))
            labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {root} differ in shape {sorted(shapes)[:4]}; pass image_size")
    return np.stack(images), np.asarray(labels, np.int32), tuple(classes)


def read_split_file(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """A class split, JSON ``{"base": [...], "val": [...], "novel": [...]}``; raises
    ``ValueError`` naming the class when two parts share one."""
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not {"base", "novel"} <= set(raw):
        raise ValueError(f"{path}: split file needs 'base' and 'novel' lists, got {raw!r:.200}")
    split = {k: tuple(raw.get(k, ())) for k in ("base", "val", "novel")}
    check_split(split)
    return split


def check_split(split: dict[str, tuple[str, ...]], what: str = "class") -> dict[str, str]:
    """``{name: part}`` of a ``{part: names}`` split; ``ValueError`` naming a name in two parts."""
    seen: dict[str, str] = {}
    for part, names in split.items():
        for n in names:
            if n in seen:
                raise ValueError(f"{what} {n!r} is in both {seen[n]!r} and {part!r} of the split")
            seen[n] = part
    return seen


def load_mstar(
    root: str | os.PathLike,
    *,
    split: dict[str, tuple[str, ...]] | str | os.PathLike | None = None,
    image_size: int = 64,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MSTAR chips from ``root/<CLASS>/*`` as ``{"base"|"val"|"novel": (images, labels)}``
    (labels index ``MSTAR_CLASSES`` order restricted to the split's classes); ``split`` a dict,
    a JSON split file, or ``MSTAR_DEFAULT_SPLIT``."""
    if split is None:
        split = MSTAR_DEFAULT_SPLIT
    elif not isinstance(split, dict):
        split = read_split_file(split)
    check_split(split)
    names = tuple(n for part in ("base", "val", "novel") for n in split.get(part, ()))
    images, labels, classes = load_chip_folder(root, classes=names, image_size=image_size)
    out = {}
    for part in ("base", "val", "novel"):
        ids = [classes.index(n) for n in split.get(part, ())]
        keep = np.isin(labels, ids)
        out[part] = (images[keep], labels[keep])
    return out

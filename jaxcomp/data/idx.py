"""IDX files (the original MNIST / Fashion-MNIST format), gzip or plain, read without TensorFlow.

Format (LeCun's MNIST page): 2 zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
big-endian uint32, then the data in C order, big-endian.

Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package installs the four original files under
``/usr/share/datasets/fashion-mnist``; ``load_fashion_mnist`` reads them from there, from
``$JAXCOMP_FASHION_MNIST_DIR``, or from any ``data_dir`` holding a copy of the original files.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
from etils import epath

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its stored shape and dtype
    (native byte order). Raises ``FileNotFoundError`` / ``ValueError`` naming the path when the
    file is missing, has a bad header, or is truncated."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header has 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = _DTYPES[code]
    want = int(np.prod(shape)) * dtype.itemsize
    have = len(raw) - header
    if have != want:
        raise ValueError(
            f"{path}: IDX data has {have} bytes, header shape {shape} of {dtype} needs {want}"
            + (" (truncated file)" if have < want else "")
        )
    arr = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find(data_dir: epath.Path, stem: str) -> epath.Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(
        f"{data_dir / (stem + '.gz')} not found; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or pass data_dir= / set JAXCOMP_FASHION_MNIST_DIR "
        "to a folder holding the original IDX files"
    )


def read_idx_classification(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An (images, labels) IDX pair as ``(uint8 (N,H,W,1), int32 (N,))``, checked for matching
    lengths, uint8 pixels and labels in ``[0, num_classes)``."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of shape (N,), got {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    labels = labels.astype(np.int32)
    if (
        num_classes is not None
        and labels.size
        and (labels.min() < 0 or labels.max() >= num_classes)
    ):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{labels_path}: label {bad} outside [0, {num_classes})")
    return images[..., None], labels


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
    """Where the Fashion-MNIST IDX files are: ``data_dir``, else ``$JAXCOMP_FASHION_MNIST_DIR``,
    else Debian's ``/usr/share/datasets/fashion-mnist``."""
    return epath.Path(data_dir or os.environ.get("JAXCOMP_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def load_fashion_mnist(
    split: str = "train", *, data_dir: str | os.PathLike | None = None, pad_to: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's official split as ``(uint8 (N,28,28,1), int32 (N,))``: 60000 train or
    10000 test images. ``pad_to=32`` zero-pads symmetrically to 32x32 (the InDistill reference
    shapes)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = fashion_mnist_dir(data_dir)
    images, labels = read_idx_classification(
        _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte"), 10
    )
    if pad_to is not None:
        images = pad_images(images, pad_to)
    return images, labels


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad NHWC images symmetrically to ``size x size`` (extra pixel at the bottom/right)."""
    h, w = images.shape[1:3]
    if size < h or size < w:
        raise ValueError(f"pad size {size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip if the name ends in ``.gz``); for fixtures and export."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    key = array.dtype.newbyteorder("=")
    if key not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX code")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.astype(_DTYPES[code]).tobytes()
    path = epath.Path(path)
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)

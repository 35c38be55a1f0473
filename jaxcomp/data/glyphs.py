"""A few-shot glyph data set rendered offline from the DejaVu fonts matplotlib ships.

Classes are letters of many scripts (Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew, Arabic,
Unified Canadian Aboriginal Syllabics, Ogham, Tifinagh, N'Ko, Lao, Lisu, Old Italic); instances
are the letter in the DejaVu styles that have it (Sans, Serif, Mono x regular/bold/oblique), each
under a random affine map (rotation, scale, shear, shift) and an elastic distortion (Simard et
al. 2003: a Gaussian-smoothed random displacement field). Classes that render (nearly) the same
as an earlier class (Latin "A", Greek "Alpha", Cyrillic "A") are dropped. Like Omniglot, the
base / val / novel split is *by script*, so test classes come from scripts never seen in
training.

``sar=True`` makes the images look like SAR chips: the glyph is a bright target on a textured
clutter background, multiplied by fully developed speckle, ``Gamma(L, 1/L)`` with ``L`` in 1..4
looks per image, then log-compressed (dB) into 8 bits.

Everything is a pure function of the arguments (``numpy.random.default_rng`` seeded by
``(seed, class, instance)``) and is cached as ``.npz`` arrays (no pickle) in ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from etils import epath

SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x41, 0x5A), (0x61, 0x7A)),
    "greek": ((0x391, 0x3A9), (0x3B1, 0x3C9)),
    "cyrillic": ((0x410, 0x44F),),
    "armenian": ((0x531, 0x556), (0x561, 0x586)),
    "hebrew": ((0x5D0, 0x5EA),),
    "arabic": ((0x621, 0x64A),),
    "georgian": ((0x10D0, 0x10FA),),
    "canadian_syllabics": ((0x1401, 0x166C),),
    "ogham": ((0x1681, 0x169A),),
    "tifinagh": ((0x2D30, 0x2D65),),
    "nko": ((0x7CA, 0x7EA),),
    "lao": ((0xE81, 0xEAE),),
    "lisu": ((0xA4D0, 0xA4F7),),
    "old_italic": ((0x10300, 0x1031E),),
}

DEFAULT_SPLIT: dict[str, tuple[str, ...]] = {
    "base": ("latin", "cyrillic", "canadian_syllabics", "arabic", "lisu"),
    "val": ("greek", "hebrew", "ogham"),
    "novel": ("armenian", "georgian", "tifinagh", "nko", "lao", "old_italic"),
}

ALL_SCRIPTS = tuple(s for part in DEFAULT_SPLIT.values() for s in part)

FONT_STYLES = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
)

_CANVAS = 64
_FONT_SIZE = 40
_VERSION = 2  # 2: the per-image "fonts" array


def font_dir() -> str:
    """matplotlib's bundled TrueType fonts (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def _charmaps() -> dict[str, set[int]]:
    from matplotlib.ft2font import FT2Font

    d = font_dir()
    out = {}
    for style in FONT_STYLES:
        path = os.path.join(d, style + ".ttf")
        if not os.path.exists(path):
            raise FileNotFoundError(f"font {path} not found (matplotlib's DejaVu fonts)")
        out[style] = set(FT2Font(path).get_charmap().keys())
    return out


def _render(char: str, style: str) -> np.ndarray:
    """``char`` in ``style`` at a fixed size, centred on a 64x64 canvas, float in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(os.path.join(font_dir(), style + ".ttf"), _FONT_SIZE)
    img = Image.new("L", (2 * _CANVAS, 2 * _CANVAS), 0)
    draw = ImageDraw.Draw(img)
    draw.text((_CANVAS // 2, _CANVAS // 2), char, fill=255, font=font)
    a = np.asarray(img, np.float32) / 255.0
    ys, xs = np.nonzero(a > 0.05)
    if len(ys) == 0:
        return np.zeros((_CANVAS, _CANVAS), np.float32)
    a = a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = a.shape
    limit = _CANVAS - 8
    if max(h, w) > limit:  # shrink glyphs too large for the canvas
        s = limit / max(h, w)
        a = (
            np.asarray(
                Image.fromarray((a * 255).astype(np.uint8)).resize(
                    (max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR
                ),
                np.float32,
            )
            / 255.0
        )
        h, w = a.shape
    out = np.zeros((_CANVAS, _CANVAS), np.float32)
    top, left = (_CANVAS - h) // 2, (_CANVAS - w) // 2
    out[top : top + h, left : left + w] = a
    return out


def _distort(src: np.ndarray, size: int, rng: np.random.Generator, elastic: float) -> np.ndarray:
    """Resample ``src`` (64x64) to ``size x size`` through a random affine map plus an elastic
    displacement field (Gaussian-smoothed uniform noise, ``elastic`` pixels of amplitude)."""
    from scipy import ndimage

    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.8, 1.1)
    shear = rng.uniform(-0.2, 0.2)
    shift = rng.uniform(-3, 3, size=2)
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy, xx = yy - c, xx - c
    if elastic > 0:
        dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (size, size)), 3.0, mode="constant")
        dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (size, size)), 3.0, mode="constant")
        norm = max(np.abs(dy).max(), np.abs(dx).max(), 1e-8)
        yy, xx = yy + elastic * dy / norm, xx + elastic * dx / norm
    ratio = _CANVAS / size / scale
    cos, sin = np.cos(angle), np.sin(angle)
    sy = ratio * (cos * yy - sin * xx) + shift[0]
    sx = ratio * (sin * yy + cos * xx + shear * yy) + shift[1]
    cc = (_CANVAS - 1) / 2.0
    return ndimage.map_coordinates(src, [sy + cc, sx + cc], order=1, mode="constant")


def sar_speckle(images: np.ndarray, seed: int, *, looks=(1, 4)) -> np.ndarray:
    """SAR look: reflectivity = textured clutter (0.02-0.2) + target (the glyph, 0.3-1), times
    speckle ``Gamma(L, 1/L)`` (``L`` uniform in ``looks``, per image), in dB (-30..+5) -> uint8.
    ``images``: float (N, H, W) in [0, 1]."""
    from scipy import ndimage

    n, h, w = images.shape
    out = np.empty((n, h, w), np.uint8)
    for i in range(n):
        rng = np.random.default_rng((seed, 0x5A2, i))
        clutter = ndimage.gaussian_filter(rng.uniform(0, 1, (h, w)), 1.5)
        clutter = 0.02 + 0.18 * (clutter - clutter.min()) / max(np.ptp(clutter), 1e-8)
        target = rng.uniform(0.3, 1.0)
        refl = clutter + target * images[i]
        L = int(rng.integers(looks[0], looks[1] + 1))
        intensity = refl * rng.gamma(L, 1.0 / L, (h, w))
        db = 10.0 * np.log10(intensity + 1e-3)
        out[i] = np.clip((db + 30.0) / 35.0 * 255.0, 0, 255).round().astype(np.uint8)
    return out


def _classes(scripts, min_fonts: int, dedupe: float):
    """``[(char, script, styles)]`` of characters that DejaVu has, minus near-duplicates."""
    cmaps = _charmaps()
    kept, protos = [], []
    for script in scripts:
        if script not in SCRIPTS:
            raise ValueError(f"unknown script {script!r}; choose from {sorted(SCRIPTS)}")
        for a, b in SCRIPTS[script]:
            for cp in range(a, b + 1):
                styles = tuple(s for s in FONT_STYLES if cp in cmaps[s])
                if len(styles) < min_fonts:
                    continue
                ref = _render(chr(cp), styles[0])[::2, ::2]
                if ref.sum() < 4.0:
                    continue  # (almost) empty glyph
                if protos:
                    diff = np.abs(np.stack(protos) - ref).mean(axis=(1, 2))
                    if diff.min() < dedupe:
                        continue
                kept.append((chr(cp), script, styles))
                protos.append(ref)
    return kept


def render_glyphs(
    cache_dir: str | os.PathLike,
    *,
    scripts: tuple[str, ...] = ALL_SCRIPTS,
    per_class: int = 20,
    image_size: int = 28,
    seed: int = 0,
    sar: bool = False,
    min_fonts: int = 1,
    elastic: float = 1.5,
    dedupe: float = 0.02,
) -> dict[str, np.ndarray]:
    """The glyph set: ``{"images": uint8 (N, S, S, 1), "labels": int32 (N,), "fonts": (N,) str,
    "chars": (C,) str, "scripts": (C,) str}``, class ``c`` = ``chars[c]``, ``per_class`` images
    each; ``fonts[i]`` is the DejaVu style image ``i`` was drawn in (one of ``FONT_STYLES``).
    Rendered once and cached in ``cache_dir`` (file name from a hash of every argument)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    args = dict(
        scripts=list(scripts),
        per_class=per_class,
        image_size=image_size,
        seed=seed,
        sar=sar,
        min_fonts=min_fonts,
        elastic=elastic,
        dedupe=dedupe,
        version=_VERSION,
    )
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    cache = epath.Path(cache_dir)  # any epath: a gs:// workdir's cache stays in the bucket
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"glyphs_{'sar_' if sar else ''}{key}.npz"
    if path.exists():
        with path.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if sar:  # the SAR set is the plain set (cached too) passed through speckle
        plain = render_glyphs(
            cache_dir, **{k: v for k, v in args.items() if k not in ("sar", "version")}
        )
        out = dict(plain)
        out["images"] = sar_speckle(plain["images"][..., 0] / 255.0, seed)[..., None]
    else:
        classes = _classes(scripts, min_fonts, dedupe)
        images = np.empty((len(classes) * per_class, image_size, image_size), np.uint8)
        fonts = []
        for c, (char, _, styles) in enumerate(classes):
            srcs = {s: _render(char, s) for s in styles}
            for i in range(per_class):
                rng = np.random.default_rng((seed, ord(char), i))
                src = srcs[styles[i % len(styles)]]
                fonts.append(styles[i % len(styles)])
                img = _distort(src, image_size, rng, elastic)
                images[c * per_class + i] = np.clip(img * 255.0, 0, 255).round().astype(np.uint8)
        out = {
            "images": images[..., None],
            "labels": np.repeat(np.arange(len(classes), dtype=np.int32), per_class),
            "fonts": np.array(fonts),
            "chars": np.array([c for c, _, _ in classes]),
            "scripts": np.array([s for _, s, _ in classes]),
        }
    tmp = path.parent / f"{path.name}.tmp{os.getpid()}.npz"
    with tmp.open("wb") as f:
        np.savez_compressed(f, **out)
    tmp.replace(path)
    return out


def split_by_script(
    data: dict[str, np.ndarray], split: dict[str, tuple[str, ...]] = DEFAULT_SPLIT
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"base"|"val"|"novel": (images, labels)}`` with each class's label its global index;
    raises ``ValueError`` when a script is in two parts of ``split``."""
    from jaxcomp.data.folders import check_split

    seen = check_split(split, "script")
    class_part = np.array([seen.get(str(s), "") for s in data["scripts"]])
    out = {}
    for part in split:
        keep = class_part[data["labels"]] == part
        out[part] = (data["images"][keep], data["labels"][keep])
    return out

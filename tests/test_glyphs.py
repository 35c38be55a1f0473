"""Glyph renderer (DejaVu fonts from matplotlib), SAR speckle, and the MSTAR folder loader."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxcomp.data import (
    MSTAR_CLASSES,
    MSTAR_DEFAULT_SPLIT,
    load_chip_folder,
    load_mstar,
    read_split_file,
    render_glyphs,
    split_by_script,
)
from jaxcomp.data.glyphs import sar_speckle

SMALL = dict(scripts=("latin", "greek", "hebrew"), per_class=3, image_size=16)


def test_glyph_renderer_is_deterministic_and_cached(tmp_path):
    a = render_glyphs(tmp_path / "a", **SMALL)
    b = render_glyphs(tmp_path / "b", **SMALL)
    for k in ("images", "labels", "chars", "scripts"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["images"].dtype == np.uint8 and a["images"].shape[1:] == (16, 16, 1)
    n = len(a["chars"])
    np.testing.assert_array_equal(a["labels"], np.repeat(np.arange(n), 3))
    assert a["images"].reshape(len(a["labels"]), -1).max(1).min() > 100  # no blank images
    # instances of a class differ (fonts + distortions)
    assert not np.array_equal(a["images"][0], a["images"][1])
    files = list((tmp_path / "a").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    c = render_glyphs(tmp_path / "a", **SMALL)  # from the cache
    np.testing.assert_array_equal(c["images"], a["images"])
    # another seed, other instances
    d = render_glyphs(tmp_path / "a", **{**SMALL, "seed": 1})
    assert not np.array_equal(d["images"], a["images"])


def test_duplicate_glyphs_are_dropped_and_scripts_split(tmp_path):
    g = render_glyphs(tmp_path, **SMALL)
    chars = set(g["chars"].tolist())
    assert "A" in chars and "\u0391" not in chars  # Greek capital Alpha renders as Latin A
    assert "\u03bb" in chars  # Greek lambda is kept
    parts = split_by_script(g, {"base": ("latin",), "val": ("greek",), "novel": ("hebrew",)})
    classes = {k: set(np.unique(v[1]).tolist()) for k, v in parts.items()}
    assert not (classes["base"] & classes["novel"]) and not (classes["val"] & classes["novel"])
    assert sum(len(v[1]) for v in parts.values()) == len(g["labels"])
    assert set(g["scripts"][list(classes["novel"])]) == {"hebrew"}
    with pytest.raises(ValueError, match="'latin' is in both"):
        split_by_script(g, {"base": ("latin",), "novel": ("latin", "hebrew")})
    with pytest.raises(ValueError, match="unknown script 'klingon'"):
        render_glyphs(tmp_path, scripts=("klingon",))


def test_sar_speckle_statistics():
    flat = np.zeros((400, 8, 8))
    a = sar_speckle(flat, seed=3)
    np.testing.assert_array_equal(a, sar_speckle(flat, seed=3))
    assert not np.array_equal(a, sar_speckle(flat, seed=4))
    # decode dB -> intensity; clutter is in [0.02, 0.2] and speckle has mean 1
    intensity = 10 ** ((a.astype(np.float64) / 255.0 * 35.0 - 30.0) / 10.0)
    assert 0.02 < intensity.mean() < 0.2
    bright = sar_speckle(np.ones((400, 8, 8)), seed=3)
    assert bright.mean() > a.mean() + 20  # the target stands out of the clutter


def _fixture(root, sizes=((20, 24), (30, 30), (17, 19))):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(MSTAR_CLASSES):
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            img = np.full((h, w), 10 * ci, np.uint8) + rng.integers(0, 5, (h, w), dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"chip{i}.png")
    (root / "README.txt").write_text("not a class")


def test_mstar_folder_loader(tmp_path):
    root = tmp_path / "mstar"
    _fixture(root)
    x, y, names = load_chip_folder(root, image_size=12)
    assert names == tuple(sorted(MSTAR_CLASSES)) and x.shape == (30, 12, 12, 1)
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 3))
    parts = load_mstar(root, image_size=12)
    assert len(parts["val"][1]) == 0
    for part in ("base", "novel"):
        got = {MSTAR_CLASSES[i] for i in np.unique(parts[part][1])}
        assert got == set(MSTAR_DEFAULT_SPLIT[part])
        # label i is MSTAR_CLASSES[i]: the fixture's grey level encodes the class
        lab = parts[part][1]
        np.testing.assert_allclose(parts[part][0].mean(axis=(1, 2, 3)) // 10, lab, atol=1)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"base": ["2S1", "BMP2"], "val": ["D7"], "novel": ["T62", "T72"]}))
    parts = load_mstar(root, split=split, image_size=8)
    assert len(parts["base"][1]) == 6 and len(parts["val"][1]) == 3
    split.write_text(json.dumps({"base": ["2S1", "T72"], "novel": ["T62", "T72"]}))
    with pytest.raises(ValueError, match="'T72' is in both"):
        read_split_file(split)
    with pytest.raises(ValueError, match=r"\['XYZ'\] not found"):
        load_chip_folder(root, classes=("2S1", "XYZ"))
    with pytest.raises(ValueError, match="differ in shape"):
        load_chip_folder(root, image_size=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_chip_folder(tmp_path / "nope")

"""The captioned image world (jaxcomp.data.vlworld): names, captions, splits, errors."""

import numpy as np
import pytest

from jaxcomp.data import vlworld as V
from jaxcomp.data.glyphs import FONT_STYLES
from jaxcomp.data.idx import fashion_mnist_dir


def test_font_words_and_names():
    assert V.font_words("DejaVuSerif-BoldItalic") == "bold italic serif"
    assert V.font_words("DejaVuSansMono") == "regular monospace"
    assert V.font_words("DejaVuSans-Oblique") == "oblique sans"
    # every style the renderer uses has distinct words
    assert len({V.font_words(s) for s in FONT_STYLES}) == len(FONT_STYLES)
    with pytest.raises(ValueError, match="Helvetica"):
        V.font_words("Helvetica-Bold")
    with pytest.raises(ValueError, match="Cond"):
        V.font_words("DejaVuCond-Bold")
    assert V.letter_name("\u03bb") == "greek small letter lamda"
    with pytest.raises(ValueError, match="U\\+E000"):
        V.letter_name("\ue000")  # private use: no name
    assert V.with_article("ankle boot") == "an ankle boot"
    assert V.with_article("coat") == "a coat"
    assert V.fill("{a_font} {name}.", "ogham letter beith", "oblique sans") == (
        "an oblique sans ogham letter beith."
    )


def _tiny(split, tmp_path, **kw):
    return V.build_world(
        split,
        glyph_cache=tmp_path,
        scripts=("greek", "ogham"),
        glyph_per_class=5,
        glyph_test_per_class=2,
        **kw,
    )


def test_letters_split_and_captions(tmp_path):
    tr = _tiny("train", tmp_path, groups=("letters",))
    te = _tiny("test", tmp_path, groups=("letters",))
    c = len(tr.class_names)
    assert c > 40 and list(tr.class_names) == list(te.class_names)
    assert set(tr.class_groups) == {"letters"}
    # 3 training and 2 test instances of every class
    assert np.array_equal(np.bincount(tr.labels, minlength=c), np.full(c, 3))
    assert np.array_equal(np.bincount(te.labels, minlength=c), np.full(c, 2))
    # no test image equals a training image of the same class
    for k in range(c):
        a = tr.images[tr.labels == k].reshape(3, -1)
        b = te.images[te.labels == k].reshape(2, -1)
        assert not (a[:, None] == b[None]).all(-1).any()
    assert all(f.endswith(("sans", "serif", "monospace")) for f in tr.fonts)
    rng = np.random.default_rng(0)
    caps = tr.captions(rng)
    for cap, y, f in zip(caps, tr.labels, tr.fonts, strict=True):
        assert tr.class_names[y] in cap
        assert f in cap or cap == f"a photo of the {tr.class_names[y]}."
    # every drawn caption is in all_captions; the draw is a function of the generator
    assert set(caps) <= set(tr.all_captions())
    assert caps == tr.captions(np.random.default_rng(0))
    # templates are drawn uniformly: each of the 5 about 1/5 of the time
    many = tr.captions(np.random.default_rng(1), np.zeros(5000, int))
    counts = np.array([sum(c.startswith(p) for c in many) for p in ("the character", "a photo")])
    assert np.all(np.abs(counts / 5000 - 0.2) < 0.03)


def test_all_groups_labels_are_global(tmp_path):
    if not fashion_mnist_dir().exists():
        pytest.skip("dataset-fashion-mnist not installed")
    tr = _tiny("train", tmp_path)
    te = _tiny("test", tmp_path)
    assert np.array_equal(tr.group_classes("clothing"), np.arange(10))
    assert np.array_equal(tr.group_classes("digits"), np.arange(10, 20))
    assert tr.class_names[19] == "nine" and tr.class_names[9] == "ankle boot"
    n_letters = len(tr.group_classes("letters"))
    assert len(tr) == 60000 + 4000 + 3 * n_letters and len(te) == 10000 + 1000 + 2 * n_letters
    assert set(tr.fonts[tr.labels < 20]) == {""}
    sub = tr.select(tr.labels == 3)
    assert len(sub) == 6000 and set(sub.labels) == {3}
    assert all(
        c.endswith(("dress.", "dress, a fashion item."))
        for c in sub.captions(np.random.default_rng(0))
    )


def test_build_world_errors(tmp_path):
    with pytest.raises(ValueError, match="'val'"):
        _tiny("val", tmp_path)
    with pytest.raises(ValueError, match="animals"):
        _tiny("train", tmp_path, groups=("letters", "animals"))
    with pytest.raises(ValueError, match="glyph_test_per_class"):
        V.build_world("train", glyph_cache=tmp_path, groups=("letters",), glyph_per_class=3,
                      glyph_test_per_class=3)  # fmt: skip
    w = _tiny("train", tmp_path, groups=("letters",))
    with pytest.raises(ValueError, match="group must be"):
        w.group_classes("animals")
    with pytest.raises(ValueError, match="unique"):
        V.CaptionedImages(w.images[:2], w.labels[:2], w.fonts[:2], np.array(["a", "a"]),
                          np.array(["letters", "letters"]))  # fmt: skip

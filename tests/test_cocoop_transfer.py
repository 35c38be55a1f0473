"""CoOp / CoCoOp cross-dataset transfer and domain generalisation (``experiments.cocoop`` with
``protocol="transfer"``) end to end on generated data: the tiny CLIP fixture learns prompts on a
3-class ImageNet-layout source and is evaluated on a generated ImageNet-A (a variant: wnid
folders, names from ``classnames.txt``) and a generated DTD (a split file). Every accuracy in
results.json is recomputed here from the saved prompts, class names written out by the
reference's rules, and image features computed directly."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from experiments import cocoop
from experiments.configs.cocoop_vitb16 import get_config as vitb16_config
from jaxcomp.data import coop
from jaxcomp.models import clip as clip_lib
from jaxcomp.nn import prompts as P

TINY = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_clip")
# classnames.txt in ImageNet's label order; the train/val folders sort as n10 < n20 < n30.
CLASSNAMES_TXT = [("n30", "cat"), ("n10", "dog"), ("n20", "sea_lion")]
SOURCE_NAMES = ["dog", "sea lion", "cat"]  # labels = sorted wnids, names by wnid, "_" -> " "
A_WNIDS = ["n30", "n20"]  # ImageNet-A holds a subset of the classes (200 of 1000)
A_NAMES = ["sea lion", "cat"]  # sorted folders: n20 -> 0, n30 -> 1
DTD_NAMES = ["zig_zag", "banded"]  # labels 0, 1 as the split file says
_logits = nnx.jit(lambda m, f: m.logits_from_features(f))
_encode = nnx.jit(lambda c, x: c.encode_image(x))
RGB = {"n10": (200, 40, 40), "n20": (40, 200, 40), "n30": (40, 40, 200)}


def _image(path, rgb, rng, size=(20, 18)):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-40, 41, (size[1], size[0], 3))
    Image.fromarray(np.clip(np.asarray(rgb) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``imagenet/`` (train 4 + val 3 images per class, classnames.txt), ``imagenet-adversarial/
    imagenet-a/`` (2 wnids, 3 images each, a README.txt) and ``dtd/`` (images + split file)."""
    root = tmp_path_factory.mktemp("coop_data")
    rng = np.random.default_rng(0)
    (root / "imagenet").mkdir()
    (root / "imagenet" / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in CLASSNAMES_TXT)
    )
    for split, n in (("train", 4), ("val", 3)):
        for w in RGB:
            for i in range(n):
                _image(root / "imagenet" / "images" / split / w / f"{i}.png", RGB[w], rng)
    a_dir = root / "imagenet-adversarial" / "imagenet-a"
    for w in A_WNIDS:
        for i in range(3):
            _image(a_dir / w / f"{i}.png", RGB[w], rng)
    (a_dir / "README.txt").write_text("ImageNet-A")
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(DTD_NAMES):
        for s, n in (("train", 2), ("val", 1), ("test", 3)):
            for i in range(n):
                rel = f"{name}/{s}_{i}.png"
                _image(root / "dtd" / "images" / rel, RGB[["n10", "n30"][label]], rng)
                split[s].append([rel, label, name])
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return root


def _config(data_root):
    c = vitb16_config()
    c.update(dict(clip_path=TINY, data_format="zhou_split", data_dir=str(data_root),
                  dataset="ImageNet", protocol="transfer", eval_targets=("ImageNetA", "DTD"),
                  shots=2, seeds=(1,), methods=("coop",), title="tiny"))  # fmt: skip
    for m in ("coop", "cocoop"):
        c[m].update(dict(n_ctx=4, ctx_init="", steps=4, batch_size=4, lr=0.05, warmup_steps=0,
                         steps_per_epoch=1))  # fmt: skip
    return c


def _test_images(data_root):
    """Each data set's test images and labels, listed here by the reference's rules."""
    val = data_root / "imagenet" / "images" / "val"
    a_dir = data_root / "imagenet-adversarial" / "imagenet-a"
    return {
        "ImageNet": [(val / w / f"{i}.png", y) for y, w in enumerate(sorted(RGB))
                     for i in range(3)],
        "ImageNetA": [(a_dir / w / f"{i}.png", y) for y, w in enumerate(sorted(A_WNIDS))
                      for i in range(3)],
        "DescribableTextures": [(data_root / "dtd" / "images" / n / f"test_{i}.png", y)
                                for y, n in enumerate(DTD_NAMES) for i in range(3)],
    }  # fmt: skip


@pytest.fixture(scope="module")
def transfer_run(data_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("transfer")
    cfg = _config(data_root)
    return cfg, workdir, cocoop.run(cfg, str(workdir))


def test_transfer_results_equal_a_direct_evaluation(transfer_run, data_root):
    cfg, workdir, out = transfer_run
    assert out["source"] == "ImageNet" and out["targets"] == ["ImageNetA", "DescribableTextures"]
    names = {"ImageNet": SOURCE_NAMES, "ImageNetA": A_NAMES,
             "DescribableTextures": ["zig zag", "banded"]}  # fmt: skip
    assert out["classes"] == names
    assert out["test_images"] == {"ImageNet": 9, "ImageNetA": 6, "DescribableTextures": 6}
    assert json.loads((workdir / "results.json").read_text())["per_seed"] == out["per_seed"]
    assert (workdir / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    clip, tok = clip_lib.load_pretrained(TINY), clip_lib.load_tokenizer(TINY)
    feats, labels = {}, {}
    for name, items in _test_images(data_root).items():
        pixels = coop.ImageFileSource([coop.Datum(str(p), y, "") for p, y in items],
                                      image_size=16).images(slice(None))  # fmt: skip
        feats[name] = np.asarray(_encode(clip, jnp.asarray(pixels)))
        labels[name] = np.asarray([y for _, y in items])
    templates = {"ImageNet": "a photo of a {}.", "ImageNetA": "a photo of a {}.",
                 "DescribableTextures": "{} texture."}  # fmt: skip
    scale = float(jnp.exp(clip.logit_scale[...]))
    for name in names:
        w = np.asarray(P.zero_shot_classifier(clip, names[name], [templates[name]],
                                              tokenize=tok.encode))  # fmt: skip
        f = feats[name] / np.linalg.norm(feats[name], axis=-1, keepdims=True)
        want = 100 * np.mean((scale * f @ w.T).argmax(-1) == labels[name])
        assert out["per_seed"]["zero_shot"][name] == [pytest.approx(want, abs=1e-9)]

    seen = set()
    for method in cfg.methods:
        for k, seed in enumerate(cfg.seeds):
            path = workdir / f"{method}_seed{seed}" / "prompts.safetensors"
            for name in names:  # a fresh learner for the data set's classes, loaded with the
                kind = P.CoOp if method == "coop" else P.CoCoOp  # prompts learned on ImageNet
                learner = kind(clip, names[name], tokenize=tok.encode, n_ctx=4,
                               rngs=nnx.Rngs(100))  # fmt: skip
                P.load_prompts(learner, path)
                logits = np.asarray(_logits(learner, jnp.asarray(feats[name])))
                want = 100 * np.mean(logits.argmax(-1) == labels[name])
                got = out["per_seed"][method][name][k]
                assert got == pytest.approx(want, abs=1e-9), (method, seed, name)
                seen.add(round(got, 6))
        s = out["summary"][method]
        for name in names:
            r = out["per_seed"][method][name]
            assert s[name] == {"mean": pytest.approx(np.mean(r)), "std": pytest.approx(np.std(r))}
        per_target = [np.mean(out["per_seed"][method][t]) for t in out["targets"]]
        assert s["average_targets"]["mean"] == pytest.approx(np.mean(per_target))
        assert s["average_cross_dataset"]["of"] == ["DescribableTextures"]
        assert s["average_domain_generalisation"]["of"] == ["ImageNetA"]
        assert s["average_domain_generalisation"]["mean"] == pytest.approx(per_target[0])
        assert len(out["per_seed"][method]["final_loss"]) == len(cfg.seeds)
    assert len(seen) > 1  # not one constant accuracy everywhere


def test_transfer_shots_cover_every_source_class(data_root):
    cfg = _config(data_root)
    cfg.seeds = (1, 2)
    data = cocoop.load_zhou_split(cfg, 16)
    for seed in cfg.seeds:  # Dassl's sampler: `shots` of each of the 3 classes, not a base half
        labels = data["train_labels"][data["shots"][seed]]
        np.testing.assert_array_equal(np.bincount(labels, minlength=3), [2, 2, 2])
    assert not np.array_equal(data["shots"][1], data["shots"][2])
    assert data["classnames"] == SOURCE_NAMES
    assert data["targets"]["ImageNetA"]["classnames"] == A_NAMES
    assert data["targets"]["ImageNetA"]["test_labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert data["targets"]["DescribableTextures"]["template"] == "{} texture."


@pytest.mark.parametrize(
    "values, needle",
    [
        (dict(eval_targets=("ImageNetA", "ImageNet")), "config.eval_targets lists 'ImageNet'"),
        (dict(eval_targets=("DTD", "DescribableTextures")), "config.eval_targets lists "
         "'DescribableTextures' twice"),
        (dict(dataset="ImageNetR"), "config.dataset 'ImageNetR' has only a test split"),
        (dict(protocol="base_to_new"), "config.eval_targets"),
        (dict(data_format="tfds"), "config.protocol 'transfer' needs config.data_format"),
        ({"coop.class_specific": True}, "config.coop.class_specific"),
        (dict(eval_targets=("ImageNetC",)), "config.eval_targets[0] must be one of"),
    ],
)  # fmt: skip
def test_transfer_config_errors(data_root, tmp_path, values, needle):
    d = _config(data_root).to_dict()
    for key, v in values.items():
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[last] = v
    with pytest.raises(ValueError) as info:
        cocoop.run(ml_collections.ConfigDict(d), str(tmp_path / "w"))
    assert needle in str(info.value)
    assert not (tmp_path / "w").exists()


def test_image_features_padding_drops_the_padded_rows():
    clip = clip_lib.load_pretrained(TINY)
    x = np.random.default_rng(0).normal(size=(5, 16, 16, 3)).astype(np.float32)
    want = np.asarray(_encode(clip, jnp.asarray(x)))
    for batch in (2, 256):  # chunks 2, 2, 1 (the last padded to 2); one chunk padded to 8
        got = cocoop.image_features(clip, x, batch=batch)
        assert got.shape == (5, 16)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

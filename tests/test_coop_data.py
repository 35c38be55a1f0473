"""The CoOp data protocol (jaxcomp.data.coop) on a generated folder of PNGs + split file: split
reading and its errors, the class-name fixes and templates against the reference's literal
strings, K-shot sampling, base/new halves against a brute-force recomputation, decoding only
the requested files, and pixel values against a direct Pillow + numpy computation."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxcomp.data import coop

N_CLASSES, PER_SPLIT = 5, {"train": 6, "val": 2, "test": 2}
# Sizes (W, H): landscape, portrait and square, so both resize branches and odd crops are hit.
SIZES = [(13, 9), (8, 17), (10, 10), (21, 12), (9, 11)]


@pytest.fixture
def split_fixture(tmp_path):
    """``tmp_path/images/c<k>/<split>_<i>.png`` (random pixels, sizes cycling ``SIZES``) and a
    ``split_zhou_Tiny.json`` listing them, with class names carrying underscores."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    split = {s: [] for s in coop.SPLITS}
    n = 0
    for c in range(N_CLASSES):
        (root / f"c{c}").mkdir(parents=True)
        for s, k in PER_SPLIT.items():
            for i in range(k):
                w, h = SIZES[n % len(SIZES)]
                n += 1
                rel = f"c{c}/{s}_{i}.png"
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / rel)
                split[s].append([rel, c, f"class_{c}"])
    path = tmp_path / "split_zhou_Tiny.json"
    path.write_text(json.dumps(split))
    return path, root, split


def test_read_zhou_split(split_fixture, tmp_path):
    path, root, raw = split_fixture
    splits = coop.read_zhou_split(path, root)
    assert set(splits) == {"train", "val", "test"}
    for s in coop.SPLITS:
        assert [(d.path, d.label, d.classname) for d in splits[s]] == [
            (os.path.join(str(root), rel), label, name) for rel, label, name in raw[s]
        ]
        assert all(os.path.isabs(d.path) and os.path.isfile(d.path) for d in splits[s])
    assert coop.classnames_of(splits["train"]) == [f"class_{c}" for c in range(N_CLASSES)]
    # save_zhou_split writes the same file back (paths relative to the image root)
    out = tmp_path / "again.json"
    coop.save_zhou_split(splits, out, root)
    assert json.loads(out.read_text()) == raw


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.pop("val"), r"lacks the key\(s\) \['val'\]"),
        (lambda s: s["train"].__setitem__(3, ["c0/x.png", -1, "class_0"]), r"train\[3\].*int >= 0"),
        (lambda s: s["test"].__setitem__(1, ["c0/x.png", "0", "class_0"]), r"test\[1\].*'0'.*int"),
        (lambda s: s["val"].__setitem__(0, ["c0/x.png", True, "class_0"]), r"val\[0\].*int"),
        (lambda s: s["train"].__setitem__(2, ["c0/x.png", 0.5, "class_0"]), r"train\[2\].*int"),
        (lambda s: s["train"].__setitem__(0, ["c0/x.png", 0]), r"train\[0\].*\[relative path"),
        (lambda s: s["train"].__setitem__(0, [7, 0, "class_0"]), r"train\[0\].*path"),
        (lambda s: s["test"].__setitem__(1, ["c0/x.png", 0, ""]), r"test\[1\].*class name"),
        # label 1 named differently from train[6] (the first item of class 1)
        (lambda s: s["test"].__setitem__(2, ["c1/x.png", 1, "cat"]),
         r"test\[2\].*label 1 is 'class_1' at train\[6\]"),
        (lambda s: s["val"].__setitem__(1, ["c1/x.png", 9, "class_0"]),
         r"val\[1\].*class 'class_0' has label 0 at train\[0\]"),
        (lambda s: s.__setitem__("train", {"a": 1}), r"'train' must be a list"),
    ],
)  # fmt: skip
def test_read_zhou_split_errors(split_fixture, tmp_path, mutate, match):
    _, root, raw = split_fixture
    raw = json.loads(json.dumps(raw))
    mutate(raw)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=match):
        coop.read_zhou_split(bad, root)


def test_read_zhou_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coop.read_zhou_split(tmp_path / "nope.json", tmp_path)
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        coop.read_zhou_split(tmp_path / "a.json", tmp_path)
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        coop.read_zhou_split(tmp_path / "b.json", tmp_path)


def test_templates_and_classname_fixes_match_reference_strings():
    # CoOp trainers/zsclip.py CUSTOM_TEMPLATES, and the prompt's "_" -> " " of CoOp's learners
    assert coop.zero_shot_prompts("OxfordFlowers", ["pink_primrose"]) == [
        "a photo of a pink primrose, a type of flower."
    ]
    assert coop.zero_shot_prompts("Flowers102", ["hard-leaved_pocket_orchid"]) == [
        "a photo of a hard-leaved pocket orchid, a type of flower."
    ]
    assert coop.zero_shot_prompts("DTD", ["banded"]) == ["banded texture."]
    assert coop.zero_shot_prompts("EuroSAT", ["Sea or Lake"]) == [
        "a centered satellite photo of Sea or Lake."
    ]
    assert coop.zero_shot_prompts("OxfordPets", ["great_pyrenees"]) == [
        "a photo of a great pyrenees, a type of pet."
    ]
    assert coop.zero_shot_prompts("Food101", ["apple_pie"]) == [
        "a photo of apple pie, a type of food."
    ]
    assert coop.zero_shot_prompts("FGVCAircraft", ["707-320"]) == [
        "a photo of a 707-320, a type of aircraft."
    ]
    assert coop.zero_shot_prompts("UCF101", [coop.ucf101_classname("ApplyEyeMakeup")]) == [
        "a photo of a person doing Apply Eye Makeup."
    ]
    for name in ("ImageNet", "Caltech101", "StanfordCars", "SUN397"):
        assert coop.coop_dataset(name).template == "a photo of a {}."
    assert len(coop.COOP_DATASETS) == 11
    assert coop.ucf101_classname("YoYo") == "Yo_Yo"
    assert (
        coop.stanford_cars_classname("AM General Hummer SUV 2000") == "2000 AM General Hummer SUV"
    )
    assert coop.sun397_classname("/b/bakery/shop") == "shop bakery"
    assert coop.sun397_classname("/a/abbey") == "abbey"
    assert (
        coop.oxford_pets_classname("american_pit_bull_terrier_105") == "american_pit_bull_terrier"
    )
    assert coop.oxford_pets_classname("Abyssinian_100") == "abyssinian"
    assert coop.EUROSAT_NEW_CLASSNAMES["HerbaceousVegetation"] == "Herbaceous Vegetation Land"
    with pytest.raises(ValueError, match="'Flowers'"):
        coop.coop_dataset("Flowers")


def _write_tree(root, classes, n=10, size=(6, 5)):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (i, 0, 0)).save(root / c / f"{i:03d}.png")


def test_caltech101_and_eurosat_fixes(tmp_path):
    info = coop.coop_dataset("Caltech101")
    root = tmp_path / "caltech-101" / info.image_dir
    _write_tree(root, ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes",
                       "accordion", "airplanes"])  # fmt: skip
    splits = coop.split_image_folder(
        root, ignored=info.ignored, new_classnames=info.new_classnames, seed=0
    )
    # Folders sorted (upper case first), the two ignored ones dropped, four renamed.
    assert coop.classnames_of(*splits.values()) == [
        "face", "leopard", "motorbike", "accordion", "airplane"
    ]  # fmt: skip
    assert [len(splits[s]) for s in coop.SPLITS] == [25, 10, 15]  # 50 / 20 / 30 of 10 per class
    paths = [d.path for s in coop.SPLITS for d in splits[s]]
    assert len(set(paths)) == 50 and not any("BACKGROUND" in p or "easy" in p for p in paths)
    # written in the reference's location, it loads through the registry
    coop.save_zhou_split(splits, tmp_path / "caltech-101" / info.split_file, root)
    again = coop.load_coop_dataset(tmp_path, "Caltech101")
    assert again == splits

    eroot = tmp_path / "eurosat" / "2750"
    _write_tree(eroot, ["AnnualCrop", "SeaLake"], n=4)
    info = coop.coop_dataset("EuroSAT")
    e = coop.split_image_folder(eroot, new_classnames=info.new_classnames)
    assert coop.classnames_of(e["train"]) == ["Annual Crop Land", "Sea or Lake"]
    assert coop.zero_shot_prompts("EuroSAT", coop.classnames_of(e["train"]))[1] == (
        "a centered satellite photo of Sea or Lake."
    )


def _items(counts, seed=0):
    """Datum items with ``counts[c]`` items of class ``c``, shuffled."""
    items = [coop.Datum(f"/x/{c}_{i}.png", c, f"n{c}") for c, k in enumerate(counts)
             for i in range(k)]  # fmt: skip
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def test_generate_fewshot_dataset():
    counts = [20, 3, 16, 9, 40]
    items = _items(counts)
    shots = coop.generate_fewshot_dataset(items, 8, seed=1)
    got = np.bincount([d.label for d in shots], minlength=len(counts))
    np.testing.assert_array_equal(got, np.minimum(counts, 8))  # a short class keeps all it has
    assert len(set(shots)) == len(shots) and set(shots) <= set(items)  # without replacement
    assert coop.generate_fewshot_dataset(items, 8, seed=1) == shots  # deterministic per seed
    assert set(coop.generate_fewshot_dataset(items, 8, seed=2)) != set(shots)
    # classes in order of first appearance, as Dassl's defaultdict
    first_seen = list(dict.fromkeys(d.label for d in items))
    assert list(dict.fromkeys(d.label for d in shots)) == first_seen
    rep = coop.generate_fewshot_dataset(items, 8, seed=1, repeat=True)
    np.testing.assert_array_equal(np.bincount([d.label for d in rep]), [8] * 5)
    assert coop.generate_fewshot_dataset(items, 0, seed=1) == items
    assert coop.generate_fewshot_dataset(items, -1, seed=1) == items


@pytest.mark.parametrize("n_classes", [1, 2, 7, 10])
def test_subsample_classes_brute_force(n_classes):
    # labels 0..2n-1 of which only the even ones are present, so relabelling is visible
    train = [coop.Datum(f"/t/{y}_{i}", 2 * y, f"n{y}") for y in range(n_classes) for i in range(2)]
    test = [coop.Datum(f"/e/{y}", 2 * y, f"n{y}") for y in range(n_classes)]
    for subsample in ("base", "new"):
        got_train, got_test = coop.subsample_classes(train, test, subsample=subsample)
        labels = sorted({d.label for d in train})
        m = -(-len(labels) // 2)  # ceil
        keep = labels[:m] if subsample == "base" else labels[m:]
        for got, split in ((got_train, train), (got_test, test)):
            want = [(d.path, keep.index(d.label), d.classname) for d in split if d.label in keep]
            assert [tuple(d) for d in got] == want
        assert coop.subsample_classes(train, subsample=subsample) == got_train
    assert m == math.ceil(n_classes / 2)
    assert coop.subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ValueError, match="'old'"):
        coop.subsample_classes(train, subsample="old")


def _expected_eval(path, size):
    """CLIP's eval transform written out directly: short side to ``size`` (bicubic), centre
    crop, scale to [0, 1], (x - mean) / std with OpenAI's constants."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    x = np.asarray(im, np.float64)[top : top + size, left : left + size] / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    return (x - mean) / std


def test_source_decodes_only_requested_files(split_fixture, monkeypatch):
    path, root, _ = split_fixture
    train = coop.read_zhou_split(path, root)["train"]
    shots = coop.generate_fewshot_dataset(train, 2, seed=0)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: (opened.append(str(p)),
                                                           real_open(p, *a, **k))[1])  # fmt: skip
    source = coop.ImageFileSource(shots, image_size=8)
    assert opened == [] and len(source) == 2 * N_CLASSES  # nothing decoded up front
    for i in (3, 0, 7):
        rec = source[i]
        assert rec["image"].shape == (8, 8, 3) and rec["image"].dtype == np.float32
        assert int(rec["label"]) == shots[i].label
    assert opened == [shots[i].path for i in (3, 0, 7)] and source.opened == 3
    assert set(opened) <= {d.path for d in shots}
    batch = source.images([1, 2])
    assert batch.shape == (2, 8, 8, 3) and opened[3:] == [shots[1].path, shots[2].path]
    with pytest.raises(IndexError):
        source[len(source)]


@pytest.mark.parametrize("size", [5, 8, 12])
def test_source_pixels_equal_direct_pillow(split_fixture, size):
    path, root, _ = split_fixture
    items = coop.read_zhou_split(path, root)["test"][: len(SIZES)]  # every size once
    source = coop.ImageFileSource(items, image_size=size)
    for i, d in enumerate(items):
        np.testing.assert_allclose(source[i]["image"], _expected_eval(d.path, size), atol=1e-5)
    raw = coop.ImageFileSource(items, decode="raw")[1]["image"]
    np.testing.assert_array_equal(raw, np.asarray(Image.open(items[1].path).convert("RGB")))


def test_clip_constants_match_the_model():
    from jaxcomp.models import clip as clip_lib

    assert coop.CLIP_MEAN == tuple(clip_lib.OPENAI_MEAN)
    assert coop.CLIP_STD == tuple(clip_lib.OPENAI_STD)


def test_source_in_source_stream(split_fixture):
    from jaxcomp.data.tfds import SourceStream

    path, root, _ = split_fixture
    source = coop.ImageFileSource(coop.read_zhou_split(path, root)["train"], image_size=6)
    stream = SourceStream(source, 4, seed=0, workers=0)
    b = stream.batch(1)
    keys = stream.record_keys(1)
    np.testing.assert_array_equal(b["label"], source.labels[keys])
    np.testing.assert_array_equal(b["image"], source.images(keys))


def test_random_resized_crop_params():
    for seed in range(200):
        h, w = (30, 50) if seed % 2 else (41, 17)
        top, left, ch, cw = coop.random_resized_crop_params(h, w, np.random.default_rng(seed))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
        assert (top, left, ch, cw) == coop.random_resized_crop_params(
            h, w, np.random.default_rng(seed)
        )
    # an impossible scale falls back to the centre crop clamped to the ratio range
    assert coop.random_resized_crop_params(10, 40, np.random.default_rng(0), scale=(5, 6)) == (
        0, 13, 10, 13
    )  # fmt: skip
    assert coop.random_resized_crop_params(12, 12, np.random.default_rng(0), scale=(5, 6)) == (
        0, 0, 12, 12
    )  # fmt: skip


def test_random_resized_crop_flip():
    image = np.random.default_rng(0).integers(0, 256, (19, 27, 3), dtype=np.uint8)
    flips = 0
    for seed in range(40):
        out = coop.random_resized_crop_flip(image, seed, 8)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, coop.random_resized_crop_flip(image, seed, 8))
        # the same draws, done by hand: crop params, Pillow bicubic resize, then the flip coin
        rng = np.random.default_rng(seed)
        top, left, h, w = coop.random_resized_crop_params(19, 27, rng)
        want = np.asarray(
            Image.fromarray(image[top : top + h, left : left + w]).resize(
                (8, 8), Image.Resampling.BICUBIC
            )
        )
        flip = rng.uniform() < 0.5
        flips += flip
        np.testing.assert_array_equal(out, want[:, ::-1] if flip else want)
    assert 10 < flips < 30
    assert not np.array_equal(
        coop.random_resized_crop_flip(image, 0, 8), coop.random_resized_crop_flip(image, 1, 8)
    )


def test_grain_pipeline_with_augmentation(split_fixture):
    import grain.python as grain

    path, root, _ = split_fixture
    raw = coop.ImageFileSource(coop.read_zhou_split(path, root)["train"], decode="raw")
    ds = grain.MapDataset.source(raw).random_map(coop.RandomResizedCropFlip(6), seed=3)
    a, b = ds[4], ds[4]
    assert a["image"].shape == (6, 6, 3) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])  # per-record rng from the seed
    assert int(a["label"]) == raw.labels[4]
    assert raw.opened == 2


def test_tfds_latest_version_is_numeric():
    from jaxcomp.data.tfds import latest_version

    assert latest_version(["1.9.0", "1.10.0", "1.2.0"]) == "1.10.0"
    assert latest_version(["incomplete.1.11.0", ".x", "2.0.0", "10.0.0", "README"]) == "10.0.0"
    with pytest.raises(FileNotFoundError, match="/data/cifar10"):
        latest_version(["incomplete.1.0.0"], "/data/cifar10")


def test_cocoop_split_file_path_decodes_only_base_shots(split_fixture, monkeypatch):
    """``experiments.cocoop.load_zhou_split`` on the fixture laid out as CoOp's DTD: per seed
    ``shots`` of every base class, and only those images (and the test ones) are ever opened."""
    import ml_collections

    from experiments import cocoop

    path, root, _ = split_fixture
    data_root = root.parent / "coop_data"
    (data_root / "dtd").mkdir(parents=True)
    os.symlink(root, data_root / "dtd" / "images")
    os.symlink(path, data_root / "dtd" / "split_zhou_DescribableTextures.json")
    cfg = ml_collections.ConfigDict(
        dict(source="hf", data_format="zhou_split", data_dir=str(data_root), dataset="DTD",
             seeds=(1, 2), shots=2, max_test=4)
    )  # fmt: skip
    cocoop.check_data(cfg)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: (opened.append(str(p)),
                                                           real_open(p, *a, **k))[1])  # fmt: skip
    data = cocoop.load_zhou_split(cfg, 6)
    assert opened == []  # nothing decoded while loading
    base = [0, 1, 2]  # ceil(5 / 2) of the labels 0..4
    for seed in cfg.seeds:
        labels = data["train_labels"][data["shots"][seed]]
        np.testing.assert_array_equal(np.bincount(labels, minlength=5), [2, 2, 2, 0, 0])
    assert data["template"] == "{} texture."
    assert data["classnames"] == [f"class {c}" for c in range(N_CLASSES)]
    assert len(data["test"]) == 4 and len(set(data["test_labels"].tolist())) == 4  # spread out
    np.testing.assert_array_equal(np.unique(data["labels"]), range(N_CLASSES))
    feats = [data["train"][i : i + 3] for i in range(0, len(data["train"]), 3)]
    assert np.concatenate(feats).shape == (len(data["train"]), 6, 6, 3)
    assert sorted(opened) == sorted(data["train"].source.items[i].path
                                    for i in range(len(data["train"])))  # fmt: skip
    assert all(f"/c{c}/train_" in p for p in opened for c in [int(p.split("/c")[-1][0])])
    assert {int(p.split("/c")[-1][0]) for p in opened} <= set(base)
    with pytest.raises(ValueError, match="config.dataset"):
        cocoop.check_data(ml_collections.ConfigDict({**cfg.to_dict(), "dataset": "flowers"}))


# --------------------------------------------------------------------------------------------
# The ImageNet variants of the domain-generalisation benchmark (CoOp's datasets/imagenetv2.py,
# imagenet_sketch.py, imagenet_a.py, imagenet_r.py) on generated trees

# classnames.txt order (= ImageNet's label order) differs from the wnids' sorted order, so a
# reader that confuses the two rules (V2: file order; the others: sorted folders) gets it wrong.
WNIDS = ["n0300", "n0100", "n0500", "n0200", "n0400"]
WNID_NAMES = ["tench", "goldfish", "great white shark", "tiger_shark", "hammerhead"]


def _write_classnames(path, wnids=WNIDS, names=WNID_NAMES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)) + "\n")


def _listing(items):
    return [(os.path.relpath(d.path, os.path.dirname(os.path.dirname(d.path))), d.label,
             d.classname) for d in items]  # fmt: skip


def test_read_imagenet_classnames(tmp_path):
    _write_classnames(tmp_path / "classnames.txt")
    assert coop.read_imagenet_classnames(tmp_path / "classnames.txt") == dict(
        zip(WNIDS, WNID_NAMES)
    )
    assert list(coop.read_imagenet_classnames(tmp_path / "classnames.txt")) == WNIDS  # file order
    (tmp_path / "dup.txt").write_text("n1 a\nn2 b\nn1 c\n")
    with pytest.raises(ValueError, match=r"dup.txt: line 3 repeats the wnid 'n1'"):
        coop.read_imagenet_classnames(tmp_path / "dup.txt")
    (tmp_path / "bare.txt").write_text("n1 a\nn2\n")
    with pytest.raises(ValueError, match=r"bare.txt: line 2 has no class name"):
        coop.read_imagenet_classnames(tmp_path / "bare.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        coop.read_imagenet_classnames(tmp_path / "nope.txt")


def test_imagenet_v2_labels_are_folder_numbers_in_classnames_order(tmp_path):
    _write_classnames(tmp_path / "imagenet" / "classnames.txt")
    image_dir = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in range(len(WNIDS)):
        _write_tree(image_dir, [str(label)], n=label + 1)
    test = coop.load_coop_dataset(tmp_path, "ImageNetV2")
    assert list(test) == ["test"]
    # label i: folder "i", the i-th line of classnames.txt; files sorted
    assert _listing(test["test"]) == [(f"{y}/{i:03d}.png", y, WNID_NAMES[y])
                                      for y in range(5) for i in range(y + 1)]  # fmt: skip
    assert coop.classnames_of(test["test"]) == WNID_NAMES
    # errors: a missing label folder, a folder that is no label of classnames.txt
    os.rename(image_dir / "3", image_dir / "5")
    with pytest.raises(ValueError, match=r"folders \['5'\] are not labels 0..4 of the 5 classes"):
        coop.load_coop_dataset(tmp_path, "ImageNetV2")
    os.rename(image_dir / "5", tmp_path / "elsewhere")
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{image_dir / '3'} (label 3, 'tiger_shark'")
    ):
        coop.load_coop_dataset(tmp_path, "ImageNetV2")


@pytest.mark.parametrize(
    "name, image_dir, wnids",
    [
        ("ImageNetSketch", "imagenet-sketch/images", WNIDS),
        ("ImageNetA", "imagenet-adversarial/imagenet-a", ["n0500", "n0100", "n0400"]),
        ("ImageNetR", "imagenet-rendition/imagenet-r", ["n0200", "n0300"]),
    ],
)
def test_imagenet_wnid_variants_label_sorted_folders(tmp_path, name, image_dir, wnids):
    _write_classnames(tmp_path / "imagenet" / "classnames.txt")
    root = tmp_path / image_dir
    for k, w in enumerate(wnids):
        _write_tree(root, [w], n=k + 2)
    (root / "README.txt").write_text("not a class")  # ImageNet-A / -R ship one
    (root / ".DS_Store").mkdir()
    test = coop.load_coop_dataset(tmp_path, name)["test"]
    # labels: the folders' sorted order; names: looked up by wnid in classnames.txt
    name_of = dict(zip(WNIDS, WNID_NAMES))
    want = [(f"{w}/{i:03d}.png", y, name_of[w]) for y, w in enumerate(sorted(wnids))
            for i in range(wnids.index(w) + 2)]  # fmt: skip
    assert _listing(test) == want
    assert len(test) == sum(range(2, len(wnids) + 2))
    assert coop.zero_shot_prompts(name, coop.classnames_of(test)) == [
        f"a photo of a {prompt}." for prompt in
        (coop.prompt_classname(name_of[w]) for w in sorted(wnids))
    ]  # fmt: skip
    # the variant's own copy of classnames.txt (the reference's layout) wins over ImageNet's
    _write_classnames(root.parent / "classnames.txt", names=[n.upper() for n in WNID_NAMES])
    again = coop.load_coop_dataset(tmp_path, name)["test"]
    assert [d.classname for d in again] == [d.classname.upper() for d in test]
    # a wnid that classnames.txt lacks
    _write_tree(root, ["n9999"], n=1)
    with pytest.raises(ValueError, match=r"folders \['n9999'\] are not in .*classnames.txt"):
        coop.load_coop_dataset(tmp_path, name)


def test_imagenet_variant_errors_name_the_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither .*imagenet-adversarial/classnames.txt "
                       r"nor .*imagenet/classnames.txt"):  # fmt: skip
        coop.load_coop_dataset(tmp_path, "ImageNetA")
    _write_classnames(tmp_path / "imagenet" / "classnames.txt")
    missing = tmp_path / "imagenet-rendition" / "imagenet-r"
    with pytest.raises(FileNotFoundError, match=re.escape(f"image folder not found: {missing}")):
        coop.load_coop_dataset(tmp_path, "ImageNetR")
    with pytest.raises(FileNotFoundError, match="imagenetv2-matched-frequency-format-val"):
        coop.load_coop_dataset(tmp_path, "ImageNetV2")
    assert coop.canonical_name("DTD") == "DescribableTextures"
    assert coop.canonical_name("ImageNetA") == "ImageNetA"
    assert len(coop.known_datasets()) == 11 + 2 + 4
    with pytest.raises(ValueError, match="'ImageNetC'"):
        coop.coop_dataset("ImageNetC")

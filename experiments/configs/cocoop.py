"""Demo: a small CLIP pretrained on MNIST-5k digits, then zero-shot vs CoOp vs CoCoOp base-to-new.

python -m experiments.cocoop --config=experiments/configs/cocoop.py --workdir=runs/cocoop
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.source = "mnist_demo"
    c.title = "MNIST-5k, tiny CLIP, 16 shots, base 0-4 / new 5-9"
    # Small CLIP (both towers: width, layers, heads; 28x28 digits in 7x7 patches).
    c.model = ml_collections.ConfigDict(
        dict(width=64, layers=2, heads=4, patch_size=7, context_length=16, projection_dim=64)
    )
    c.pretrain_seed = 0
    c.pretrain_steps = 300
    c.pretrain_batch = 128
    c.pretrain_lr = 1e-3
    c.ckpt_every = 0  # pretraining checkpoints (0 = at the end only)
    c.log_every = 20  # pretraining metrics
    c.pretrain_templates = (
        "a photo of the number {}.",
        "a handwritten {}.",
        "the digit {}.",
        "a drawing of a {}.",
        "an image of the number {}.",
        "a {} written by hand.",
    )
    c.zero_shot_templates = ("a photo of the number {}.", "the digit {}.", "a handwritten {}.")
    c.ctx_init = "a photo of the number"  # words for the tokenizer vocabulary
    # Downstream digits are mirrored (unseen in pretraining); also run with "vflip" and "none".
    c.downstream_shift = "hflip"
    # Protocol. As in CoCoOp's base-to-new setting both learners start from words (n_ctx=0: the
    # number of init tokens, here 5); ctx_init="" with n_ctx=4 gives the random N(0, 0.02) init.
    # "base_to_new", or "transfer" (data_format "zhou_split" only): learn on all classes of
    # `dataset`, evaluate on it and on each of `eval_targets` (coop_imagenet_transfer.py)
    c.protocol = "base_to_new"
    c.eval_targets = ()
    c.shots = 16
    # CoOp's linear-probe baseline on the base classes (same K shots per seed, C searched on this
    # many further shots per class; Dassl's few-shot validation is min(K, 4)); 0 = off
    c.linear_probe_val_shots = 4
    c.seeds = (1, 2, 3)
    c.methods = ("coop", "cocoop")
    c.coop = ml_collections.ConfigDict(
        dict(
            n_ctx=0,
            ctx_init="a photo of the number",
            class_specific=False,
            class_token_position="end",
            lr=0.02,
            momentum=0.9,
            steps=300,
            batch_size=32,
            # the CoOp recipe's extras, off here (cocoop_vitb16.py turns them on)
            weight_decay=0.0,
            warmup_steps=0,
            warmup_lr=1e-5,
            steps_per_epoch=1,
        )  # fmt: skip
    )
    c.cocoop = ml_collections.ConfigDict(
        dict(
            n_ctx=0,
            ctx_init="a photo of the number",
            lr=0.02,
            momentum=0.9,
            steps=300,
            batch_size=32,
            weight_decay=0.0,
            warmup_steps=0,
            warmup_lr=1e-5,
            steps_per_epoch=1,
            chunk_size=8,
        )
    )
    return c

"""CoOp / CoCoOp cross-dataset transfer and domain generalisation (CoOp Sec. 4.3, CoCoOp Tables
2-3): prompts learned on 16 shots of all 1000 ImageNet classes with CLIP ViT-B/16, evaluated on
ImageNet and, unchanged, on the 10 other CoOp data sets and the 4 ImageNet variants. Needs the
weights and CoOp's data layout (``docs/cocoop.md``); nothing is downloaded::

    python -m experiments.cocoop --config=experiments/configs/coop_imagenet_transfer.py \\
        --config.clip_path=/path/to/clip-vit-base-patch16 --config.data_dir=/path/to/coop_data \\
        --workdir=runs/coop_imagenet_transfer

Recipes: CoOp as its ``scripts/coop/main.sh`` + ``vit_b16_ep50.yaml`` for ImageNet (16 random
context tokens, unified, class token at the end; SGD lr 0.002, momentum 0.9, weight decay 5e-4,
batch 32, 50 epochs of 16,000 images = 500 steps each, 1 warm-up epoch at 1e-5, cosine stepped
per epoch); CoCoOp as ``vit_b16_c4_ep10_batch1_ctxv1.yaml`` (4 tokens from "a photo of a", 10
epochs at batch 1 = 160,000 steps, lr 0.002, 1 warm-up epoch). Like the base-to-new
configs there is no augmentation (image features are computed once).
"""

from experiments.configs.cocoop_vitb16 import get_config as vitb16_config

#: The targets of CoCoOp Table 2 (cross-dataset) and Table 3 (domain generalisation).
CROSS_DATASET = ("Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                 "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101")  # fmt: skip
DOMAIN_GENERALISATION = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


def get_config():
    c = vitb16_config()
    c.title = "CLIP ViT-B/16, 16 shots of ImageNet -> 10 data sets + 4 ImageNet variants"
    c.data_format = "zhou_split"
    c.data_dir = "~/coop_data"
    c.dataset = "ImageNet"
    c.protocol = "transfer"
    c.eval_targets = CROSS_DATASET + DOMAIN_GENERALISATION
    c.shots = 16
    c.seeds = (1, 2, 3)
    c.methods = ("coop", "cocoop")
    steps_per_epoch = 16 * 1000 // 32  # 500
    c.coop.update(dict(n_ctx=16, ctx_init="", class_specific=False, class_token_position="end",
                       lr=0.002, momentum=0.9, batch_size=32, steps=50 * steps_per_epoch,
                       weight_decay=5e-4, warmup_steps=steps_per_epoch, warmup_lr=1e-5,
                       steps_per_epoch=steps_per_epoch))  # fmt: skip
    images = 16 * 1000  # CoCoOp: batch 1, so an epoch is one step per image
    c.cocoop.update(dict(n_ctx=4, ctx_init="a photo of a", lr=0.002, steps=10 * images,
                         batch_size=1, warmup_steps=images, steps_per_epoch=images,
                         chunk_size=1))  # fmt: skip
    return c

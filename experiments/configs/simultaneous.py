"""Simultaneous Learning on few-shot Fashion-MNIST with the small CNN (see experiments/simultaneous.py).

All sample sizes x seeds of a method train as one vmapped program; every run sees
``target_batch`` target images per step (+ ``auxiliary_batch`` auxiliary images for the methods
with an auxiliary set), for the same number of steps whatever the sample size.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.model = "smallcnn"  # or "resnet20" (see simultaneous_resnet20.py)
    c.widths = (8, 16)  # SmallCNN conv widths (CPU budget: 2 cores shared by ~6 jobs)
    c.hidden = 32
    c.target_classes = (0, 2, 3, 4, 6)  # T-shirt/top, Pullover, Dress, Coat, Shirt
    c.methods = (
        "ce",
        "sl_similar",
        "dropout",
        "sl_dropout",
        "sl_dissimilar",
        "sl_lambda0",
        "multitask",
    )
    c.sizes = (10, 25, 50, 100)  # training images per target class
    c.seeds = 5
    c.seed = 0
    c.steps = 150
    c.target_batch = 16
    c.auxiliary_batch = 16  # target:auxiliary = 1:1 in every batch
    c.learning_rate = 3e-3
    c.weight_decay = 1e-4
    c.lam = 1.0  # weight of the inter-group penalty
    c.penalty = "log"  # or "linear"
    c.dropout = 0.5
    c.max_test = 0  # 0: all 5000 target test images
    c.probe_per_class = 100  # test images per class for the correlation analysis
    c.heatmap_methods = ("ce", "dropout", "sl_similar", "sl_dissimilar")
    c.ckpt_every = 50
    c.log_every = 25
    return c

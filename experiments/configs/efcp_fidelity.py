"""EFCP's claim on Fashion-MNIST (experiments/efcp_fidelity.py): compressed M-FAC with error
feedback vs dense M-FAC, tuned per optimizer on a validation split, paired over seeds.

SmallCNN (8/16 channels, hidden 32: 27k parameters) so that the m = 128 window turns over
10 times in 3 epochs of 55000 images at batch 128 (1287 steps). The grids centre on the EFCP
reference's ResNet-20 recipe (damping 1e-4, top-k 1%, rank 4, weight decay 1e-4).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.dataset = "fashion_mnist"  # Debian's dataset-fashion-mnist (IDX files)
    c.model = "smallcnn"
    c.widths = (8, 16)
    c.hidden = 32
    c.num_classes = 10
    c.val_size = 5000  # held out of the 60000 training images for tuning
    c.train_limit = 0  # 0: all remaining training images
    c.test_limit = 0  # 0: all 10000 test images
    c.epochs = 3
    c.tune_epochs = 1  # grid points train 1 epoch (429 steps)
    c.batch_size = 128
    c.seeds = 5
    c.bn_images = 1024  # training images to re-estimate BatchNorm statistics before testing
    c.optimizers = ("adam", "mfac", "mfac_topk", "mfac_topk_noef", "mfac_lowrank")
    c.weight_decay = 1e-4
    c.num_grads = 128
    c.topk_fraction = 0.01
    c.rank = 4
    c.adam_lr_grid = (1e-3, 3e-3)
    c.mfac_lr_grid = (3e-3, 1e-2, 3e-2)  # 1e-4 / 1e-3 were far too small in a 300-step probe
    c.damping_grid = (1e-4, 1e-2)
    c.trace_every = 4  # keep every 4th step of the direction trace
    return c

"""Long training at the smallest sample size (10 images per class, 600 steps = 192 epochs of the
50 target images): where a regulariser has the most over-fitting to fight."""

from experiments.configs.simultaneous import get_config as base_config


def get_config():
    c = base_config()
    c.methods = ("ce", "dropout", "sl_similar", "sl_dropout", "sl_dissimilar")
    c.sizes = (10,)
    c.steps = 600
    c.ckpt_every = 200
    c.log_every = 50
    return c

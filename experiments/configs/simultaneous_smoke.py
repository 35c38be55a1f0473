"""A < 60 s smoke run of experiments/simultaneous.py (tiny CNN, few steps, 2 seeds)."""

from experiments.configs.simultaneous import get_config as base_config


def get_config():
    c = base_config()
    c.widths = (4, 8)
    c.hidden = 16
    c.methods = ("ce", "sl_similar", "sl_dissimilar", "multitask")
    c.sizes = (5, 10)
    c.seeds = 2
    c.steps = 6
    c.target_batch = 8
    c.auxiliary_batch = 8
    c.max_test = 200
    c.probe_per_class = 10
    c.ckpt_every = 3
    c.log_every = 3
    return c

"""A minute-scale smoke run of experiments/losparse.py (one budget, a few steps)."""

from experiments.configs.losparse import get_config as base_config


def get_config():
    c = base_config()
    c.ratios = (0.2,)
    c.steps = 10
    c.lr_warmup_steps = 2
    c.max_heldout = 100
    return c

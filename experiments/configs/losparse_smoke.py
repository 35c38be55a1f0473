"""A seconds-long smoke run of experiments/losparse.py: one budget, all three students, a few
steps on a few sentences (every phase of the full run, at toy scale)."""

from experiments.configs.losparse import get_config as base_config


def get_config():
    c = base_config()
    c.ratios = (0.2,)
    c.steps = 4
    c.lr_warmup_steps = 1
    c.max_train = 64
    c.max_heldout = 32
    c.max_len = 16
    c.batch_size = 8
    c.eval_batch_size = 32
    return c

"""A seconds-long smoke run of experiments/losparse_polarity.py: one seed, one budget, every
method, a few steps on a few sentences, with distillation on."""

from experiments.configs.losparse_polarity import get_config as base_config


def get_config():
    c = base_config()
    c.seeds = (0,)
    c.ratios = (0.3,)
    c.max_train = 32
    c.max_len = 16
    c.batch_size = 8
    c.eval_batch_size = 16
    c.dense_epochs = 1
    c.steps = 10
    c.delta_t = 2
    c.distill = 0.5
    c.timing_repeats = 1
    return c

"""Smoke run of ``cram_polarity``: a few sentences, a few steps, every code path."""

from experiments.configs.cram_polarity import get_config as base_config


def get_config():
    c = base_config()
    c.max_train = 48
    c.max_len = 16
    c.seeds = (0,)
    c.optimizers = ("adam", "cram_plus_multi", "cram_plus_nm")
    c.epochs = 1
    c.batch_size = 8
    c.eval_batch_size = 16
    c.eval_sparsities = (0.5, 0.9)
    c.finetune_steps = 3
    c.finetune_sparsities = (0.9,)
    return c

"""A seconds-long smoke run of experiments/cocoop.py: a tiny CLIP, a few steps, one seed."""

from experiments.configs.cocoop import get_config as base_config


def get_config():
    c = base_config()
    c.model.width = 32
    c.model.layers = 1
    c.model.projection_dim = 32
    c.pretrain_steps = 40
    c.pretrain_batch = 64
    c.shots = 4
    c.seeds = (1,)
    c.coop.steps = 20
    c.cocoop.steps = 20
    return c

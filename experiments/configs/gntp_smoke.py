"""A seconds-long smoke run of experiments/gntp.py: Nations, one epoch, 20 test triples."""

from experiments.configs.gntp_nations import get_config as base_config


def get_config():
    c = base_config()
    c.dim = 20
    c.epochs = 1
    c.max_test = 20
    c.show_rules = 5
    return c

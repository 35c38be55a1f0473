"""A seconds-long smoke run of experiments/bvp.py: two problems, two degrees, three grids."""

from experiments.configs.bvp import get_config as base_config


def get_config():
    c = base_config()
    c.problems = ("dirichlet_linear", "bratu")
    c.degrees = (3, 6)
    c.grid_sizes = (8, 16, 32)
    c.eval_points = 101
    return c

"""ResNet-20 grid of experiments/simultaneous.py, reduced for a 2-core CPU: 4 methods, 2 sample sizes, 3 seeds."""

from experiments.configs.simultaneous import get_config as base_config


def get_config():
    c = base_config()
    c.model = "resnet20"
    c.methods = ("ce", "sl_similar", "dropout", "sl_dropout")
    c.sizes = (10, 50)
    c.seeds = 3
    c.steps = 200
    c.target_batch = 16
    c.auxiliary_batch = 16
    c.heatmap_methods = ("ce", "sl_similar")
    return c

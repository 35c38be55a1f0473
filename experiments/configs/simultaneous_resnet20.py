"""ResNet-20 grid of experiments/simultaneous.py, reduced for a 2-core CPU: plain CE vs SL with the
similar auxiliary, 10 and 50 images per class, 3 seeds, 200 steps (docs/simultaneous.md, "ResNet-20").

One ResNet-20 run-step of 16 + 16 images costs ~0.9 s on one core, so this grid took 2.7 h of CPU;
the dropout / SL + dropout rows were started and cut (add them with
``--config.methods='("ce","sl_similar","dropout","sl_dropout")'`` on a faster machine).
"""

from experiments.configs.simultaneous import get_config as base_config


def get_config():
    c = base_config()
    c.model = "resnet20"
    c.methods = ("ce", "sl_similar")
    c.sizes = (10, 50)
    c.seeds = 3
    c.steps = 200
    c.target_batch = 16
    c.auxiliary_batch = 16
    c.heatmap_methods = ("ce", "sl_similar")
    return c

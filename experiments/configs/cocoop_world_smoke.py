"""A short run of the captioned-world path (tests): a 1-layer CLIP on Greek and Ogham glyphs +
MNIST-5k, 30 pretraining steps, 4 shots, one seed, 10 prompt steps."""

import ml_collections

from experiments.configs.cocoop_world import get_config as world_config


def get_config() -> ml_collections.ConfigDict:
    c = world_config()
    c.model = ml_collections.ConfigDict(
        dict(width=32, layers=1, heads=2, patch_size=7, context_length=24, projection_dim=32)
    )
    c.pretrain_steps, c.pretrain_batch = 30, 64
    c.world.groups = ("digits", "letters")
    c.world.scripts = ("greek", "ogham")
    c.world.glyph_per_class, c.world.glyph_test_per_class = 8, 2
    c.task.group, c.task.prefix = "letters", "greek"
    c.shots, c.seeds = 4, (1,)
    c.linear_probe_val_shots = 2  # 6 training glyphs per class: 4 shots + 2 for validation
    c.coop.steps = c.cocoop.steps = 10
    c.coop.batch_size = c.cocoop.batch_size = 8
    return c

"""LoSparse on MiniLM distilled on GLUE SST-2 sentences (TFDS `glue/sst2`, must be prepared)."""

from experiments.configs.losparse import get_config as base_config


def get_config():
    c = base_config()
    c.data = "glue/sst2"
    c.max_heldout = 872  # the whole SST-2 validation split
    c.max_len = 64
    c.steps = 2000
    c.batch_size = 32
    c.lr_warmup_steps = 100
    c.delta_t = 10
    return c

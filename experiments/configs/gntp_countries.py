"""GNTP on Countries (NTP layout); pass --config.data_dir=DIR --config.variant=S1|S2|S3.

Templates come from ``countries_{variant}.nlt`` in ``data_dir`` unless ``templates`` is set.
"""

from experiments.configs.gntp_base import base_config


def get_config():
    c = base_config()
    c.dataset = "countries"
    c.data_dir = "tests/fixtures/countries_tiny"
    c.templates = ""
    c.dim = 20
    c.k_facts = 5
    c.k_rules = 0
    c.epochs = 60
    c.learning_rate = 0.01
    c.batch_size = 32
    c.unification = "classic"
    return c

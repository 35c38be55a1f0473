"""GNTP on Kinships (pykeen's bundled splits), the paper's templates; a few CPU minutes."""

from experiments.configs.gntp_base import NATIONS_TEMPLATES, base_config


def get_config():
    c = base_config()
    c.dataset = "kinships"
    c.epochs = 1  # CPU budget: a few minutes on a shared 2-core machine
    c.max_test = 0  # the full test set (the paper's protocol)
    c.templates = NATIONS_TEMPLATES
    return c

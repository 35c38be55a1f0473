"""GNTP on Nations (pykeen's bundled splits), the paper's templates; a few CPU minutes."""

from experiments.configs.gntp_base import NATIONS_TEMPLATES, base_config


def get_config():
    c = base_config()
    c.dataset = "nations"
    c.templates = NATIONS_TEMPLATES
    return c

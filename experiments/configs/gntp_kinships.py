"""GNTP on Kinships (pykeen's bundled splits, the full test set), the paper's templates and the
reference recipe (``gntp_base.reference_recipe``: dim 100, Adam 1e-3, 10 positives per batch with
subject / object / both corruptions, summed loss, L2, gradient values clipped to +-1, 100 epochs).
"""

from experiments.configs.gntp_base import NATIONS_TEMPLATES, base_config, reference_recipe


def get_config():
    c = reference_recipe(base_config())
    c.dataset = "kinships"
    c.templates = NATIONS_TEMPLATES
    c.max_test = 0  # the full test set (the paper's protocol)
    return c

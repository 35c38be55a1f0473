"""GNTP on the canonical Countries S1-S3 (NTP layout: ``uclnlp/ntp``'s ``data/countries``) with
the reference recipe and NTP's Countries batch (50 positives); templates from
``countries_{variant}.nlt``. Pass ``--config.data_dir=DIR --config.variant=S1|S2|S3`` (and
``--config.mentions_path=...`` with the matching ``kept`` facts for the text-mention setting).
"""

from experiments.configs.gntp_base import base_config, reference_recipe


def get_config():
    c = reference_recipe(base_config())
    c.dataset = "countries"
    c.data_dir = ""  # required: the directory holding countries_S{1,2,3}.nl(t), regions.txt, ...
    c.templates = ""  # "" = countries_{variant}.nlt of data_dir
    c.batch_size = 50  # conf/countries.conf: pos_per_batch 50
    return c

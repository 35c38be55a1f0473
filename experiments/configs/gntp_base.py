"""Shared defaults for the GNTP experiment configs (``experiments/gntp.py``)."""

import ml_collections

# Paper templates (Minervini et al. 2020, Sec. 5 / NTP Sec. 5.2): each instantiated 20 times.
NATIONS_TEMPLATES = """p(X, Y) :- q(X, Y) <20>
p(X, Y) :- q(Y, X) <20>
p(X, Y) :- q(X, Z), r(Z, Y) <20>
"""
UMLS_TEMPLATES = """p(X, Y) :- q(X, Z), r(Z, Y) <20>
p(X, Y) :- q(X, Z), q(Z, Y) <20>
p(X, Y) :- q(X, Y) <20>
"""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.dataset = "nations"  # nations | umls | kinships | countries | tsv
    c.data_dir = ""  # countries: directory in the NTP layout
    c.variant = "S1"  # countries: S1 | S2 | S3
    c.train_path = c.valid_path = c.test_path = ""  # dataset == "tsv"
    c.mentions_path = ""  # optional text mentions (joint KB + text): the GNTP code's
    # "s<TAB>[XXX]:pattern:[YYY]<TAB>o<TAB>count" files, or "s<TAB>text pattern<TAB>o"
    c.mentions_min = 1  # drop mentions seen fewer times (the reference's --mentions-min)
    c.templates = NATIONS_TEMPLATES  # GNTP clause text (or .nlt text)
    c.templates_path = ""  # overrides `templates` when set
    c.dim = 50
    c.init_scale = 1.0
    c.slope = 1.0
    c.train_slope = False
    c.depth = 1
    c.k_facts = 10  # 0 = all facts (exhaustive NTP)
    c.k_rules = 5  # 0 = all rules of each template
    c.unification = "joint"
    c.rule_attention = False  # GNTP-Attention: rule predicates as attention over known ones
    c.epochs = 15
    c.only_rules_epochs = 0
    c.batch_size = 64
    c.num_negatives = 1
    c.learning_rate = 0.03
    c.l2 = 0.0
    c.ckpt_every = 0  # 0 = one checkpoint at the end of training
    c.seed = 0
    c.eval_k_facts = 0  # 0 = same k as training
    c.max_test = 0  # 0 = all test triples
    c.show_rules = 15
    return c

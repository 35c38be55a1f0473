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
    c.train_path = c.valid_path = c.test_path = ""  # dataset == "tsv" (valid/test optional)
    # (countries: train_path replaces countries_{variant}.nl, e.g. the mention setting's kept.tsv)
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
    c.corrupt_both = False  # True: also corrupt subject and object together (reference --all)
    c.loss_reduction = "mean"  # "sum" = the reference's summed batch loss
    c.clip = 0.0  # clip gradient values to +-clip before Adam (reference --clip 1); 0 = off
    c.learning_rate = 0.03
    c.l2 = 0.0  # coefficient of sum(x^2); the reference's --l2 w is w/2 here (tf.nn.l2_loss)
    c.ckpt_every = 0  # 0 = one checkpoint at the end of training
    c.log_every = 1  # metrics.jsonl / loss-curve points every n steps (bookkeeping only)
    c.seed = 0
    c.eval_k_facts = 0  # 0 = same k as training
    c.max_test = 0  # 0 = all test triples
    c.show_rules = 15
    c.search_mb = 64  # neighbour-search chunk budget (ProverConfig.search_bytes); 0 = one shot
    return c


def reference_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The reference code's recipe (NTP ``conf/{nations,countries}.conf`` and the GNTP CLI's
    documented commands), applied to ``c`` in place; differences left are in docs/gntp.md."""
    c.dim = 100  # input_size 100
    c.init_scale = 1.0  # init (-1, 1)
    c.learning_rate = 0.001  # Adam 0.001
    c.batch_size = 10  # pos_per_batch 10 (Countries: 50)
    c.num_negatives = 1  # --corrupted-pairs 1 ...
    c.corrupt_both = True  # ... --all: + 2 subject-and-object corruptions per positive
    c.loss_reduction = "sum"  # mean_loss False
    c.l2 = 0.0005  # l2 0.001 on tf.nn.l2_loss (sum x^2 / 2)
    c.clip = 1.0  # clip (-1, 1) on gradient values
    c.epochs = 100
    c.k_facts = 10  # k_max 10
    c.k_rules = 1  # --retrieve-k-rules 1: the best rule of each template
    c.unification = "joint"
    return c

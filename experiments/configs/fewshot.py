"""FewSAR benchmark (issue 16): every method on glyphs, glyphs-SAR and Fashion-MNIST (5 base /
5 novel), 5-way 1-shot and 5-shot, on the same test episodes.

The paper's protocol is 100 episodes x E epochs with 84x84 images; this config is the run that
fits the shared 2-core machine: 28x28 images, one training run per method and data set (5-way
5-shot, 5 queries per class) tested at both 1 and 5 shots, 2 epochs of 50 episodes, StepLR
every epoch. Test: 3000 episodes (as the paper), 15 queries per class.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.method = "protonet"  # a registered name, a comma-separated list, or "all"
    c.datasets = ("glyphs", "glyphs_sar", "fashion_mnist")
    c.image_size = 28
    c.backbone = "conv64f"
    c.width = 32  # 64 = Conv64F (the paper); 32 = LibFewShot's Conv32F, to fit the shared CPU
    c.way = 5
    c.shots = (1, 5)
    c.train_shot = 5  # 0: train one model per test shot, with that shot
    c.train_query = 5
    c.test_query = 15
    c.test_episodes = 3000  # as the paper (5 x 600)
    # methods that adapt the whole network per test episode (MAML) can be tested on the first
    # image_test_episodes of the same episodes (0 = all; MAML: 30 / 130 ms per 1- / 5-shot
    # episode on this CPU)
    c.image_test_episodes = 0
    c.val_episodes = 50
    c.val_query = 15
    c.episodes_per_epoch = 50
    c.epochs = 2
    c.batch_size = 64  # pretraining batch (Baseline, Baseline++; the fork: 128)
    c.lr = 1e-3
    c.lr_step_epochs = 1
    c.lr_gamma = 0.7
    c.relation_loss = "ce"
    c.seed = 0
    c.test_seed = 1234
    c.cache_dir = ""  # glyph cache; default <workdir>/cache
    c.fashion_dir = ""
    c.fashion_val_per_class = 100
    c.mstar_root = ""  # dataset "mstar": root/<CLASS>/*
    c.mstar_split = ""  # JSON split file; default MSTAR_DEFAULT_SPLIT
    return c

"""CrAM vs SGD on the bundled MNIST-5k (4000 train / 1000 test digits).

A small model is redundant enough on MNIST that SGD survives 80-90% one-shot sparsity, so CrAM
trains with high levels (0.8, 0.9, 0.95, 0.98) and the sweep goes up to 99%.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "mnist5k"
    c.data_dir = ""
    c.test_split = "test"
    c.num_classes = 10
    c.model = "smallcnn"  # "resnet20" for the paper's architecture (slower on CPU)
    c.batch_norm = True
    c.batch_size = 128
    c.epochs = 25
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.warmup_epochs = 1
    c.augment = ""
    c.optimizers = ("sgd", "cram_plus_multi")
    c.rho = 0.1
    c.sparsities = (0.8, 0.9, 0.95, 0.98)
    c.compression = "global"
    c.eval_sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.eval_nm = ((2, 4),)
    c.shortcut = (
        "A"  # ResNet-20 shortcuts: "A" (zero-pad identity) or "B" (1x1 conv + BN, CrAM's code)
    )
    # BatchNorm re-estimation after each one-shot pruning (CrAM: reset, EMA with momentum 0.1,
    # 100 shuffled batches of 128 from a 1000-image subset, with the training augmentation;
    # bn_mode="average" is one cumulative-average pass)
    c.calibration_images = 1000
    c.bn_mode = "ema"
    c.bn_iterations = 100
    c.bn_augment = False
    # baselines: "gmp" in optimizers trains one GMP model per target (cubic schedule from
    # gmp_begin_epoch to gmp_end_fraction of the steps, mask refresh every gmp_update_every
    # steps) for the steps of the others + finetune_steps; finetune_steps > 0 fine-tunes every
    # one-shot model at finetune_sparsities with its mask fixed
    c.gmp_sparsities = (0.9, 0.95)
    c.gmp_distribution = "global"
    c.gmp_begin_epoch = 1
    c.gmp_end_fraction = 0.8
    c.gmp_update_every = 50
    c.finetune_steps = 0
    c.finetune_lr = 0.01
    c.finetune_sparsities = (0.9, 0.95)
    c.ckpt_every = 0
    c.seed = 0
    c.force_resume = False  # resume even if the config differs from the checkpoint's
    return c

"""The paper's CIFAR-10 setting (Sec. 4.1, Appendix B): ResNet-20, SGD lr 0.1, momentum 0.9,
wd 5e-4, batch 128, cosine with 5 warm-up epochs, rho 0.15, CrAM+-Multi over
(0.5, 0.7, 0.8, 0.9, 0.95). Needs a prepared TFDS ``cifar10`` under ``data_dir``:

    python -m experiments.cram --config=experiments/configs/cram_cifar10.py \
        --config.data_dir=$HOME/tensorflow_datasets --workdir=runs/cram_cifar10
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "cifar10"
    c.data_dir = os.path.expanduser("~/tensorflow_datasets")
    c.test_split = "test"
    c.num_classes = 10
    c.model = "resnet20"
    c.batch_norm = True
    c.batch_size = 128
    c.epochs = 200
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.warmup_epochs = 5
    c.augment = "crop_flip"
    c.optimizers = ("sgd", "cram_plus_multi")
    c.rho = 0.15
    c.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.compression = "global"
    c.eval_sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.eval_nm = ((2, 4),)
    c.calibration_images = 1000
    c.ckpt_every = 1000
    c.seed = 0
    return c

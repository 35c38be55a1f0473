"""The paper's CIFAR-10 setting (Sec. 4.1, Appendix B): ResNet-20, SGD lr 0.1, momentum 0.9,
wd 5e-4, batch 128, cosine with 5 warm-up epochs, rho 0.15, CrAM+-Multi over
(0.5, 0.7, 0.8, 0.9, 0.95), crop/flip augmentation. Needs a prepared TFDS ``cifar10``:

    python -m experiments.cram --config=experiments/configs/cram_cifar10.py \
        --config.data_dir=$HOME/tensorflow_datasets --workdir=runs/cram_cifar10
"""

import os

import ml_collections

from experiments.configs import cram_mnist


def get_config() -> ml_collections.ConfigDict:
    c = cram_mnist.get_config()
    c.dataset = "cifar10"
    c.data_dir = os.path.expanduser("~/tensorflow_datasets")
    c.model = "resnet20"
    c.epochs = 200
    c.learning_rate = 0.1
    c.warmup_epochs = 5
    c.augment = "crop_flip"
    c.shortcut = "B"  # the CrAM code's ResNet-20
    c.bn_augment = True
    c.rho = 0.15
    c.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.eval_sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.ckpt_every = 1000
    return c

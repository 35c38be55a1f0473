"""CrAM on real data: ResNet-20 (option B shortcuts, as the reference code) on Fashion-MNIST
(60k / 10k, Debian's ``dataset-fashion-mnist``), SGD vs CrAM+-Multi vs CrAM+-N:M, one-shot
global magnitude pruning 50..99% and 2:4 with CrAM's BatchNorm recalibration, against gradual
magnitude pruning at 90 / 95% and one-shot + a one-epoch sparse fine-tune at equal total steps.
The paper's CIFAR-10 recipe otherwise (lr 0.1, rho 0.15, CrAM+-Multi over 0.5..0.95,
crop/flip, calibration with the training augmentation). Run per seed:

    python -m experiments.cram --config=experiments/configs/cram_fashion_mnist.py \
        --config.seed=0 --workdir=runs/cram_fashion_mnist/seed0
"""

from experiments.configs import cram_cifar10


def get_config():
    c = cram_cifar10.get_config()
    c.dataset = "fashion_mnist"
    c.data_dir = ""
    c.epochs = 10
    c.warmup_epochs = 1
    c.optimizers = ("sgd", "cram_plus_multi", "cram_plus_nm", "gmp")
    c.eval_sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    c.gmp_sparsities = (0.9, 0.95)
    c.finetune_steps = 468  # one epoch of 128
    c.finetune_sparsities = (0.9, 0.95)
    c.ckpt_every = 500
    return c

"""Smoke test of the CrAM experiment: one epoch of MNIST-5k per optimizer, a short sweep."""

from experiments.configs import cram_mnist


def get_config():
    c = cram_mnist.get_config()
    c.epochs = 1
    c.batch_size = 256
    c.eval_sparsities = (0.5, 0.9)
    c.calibration_images = 256
    c.ckpt_every = 8
    return c

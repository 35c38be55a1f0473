"""Seconds-long smoke run of experiments/efcp_fidelity.py: dense vs top-k M-FAC on 512 training
images, window 8, one grid point each, 2 seeds of one epoch."""

from experiments.configs import efcp_fidelity


def get_config():
    c = efcp_fidelity.get_config()
    c.optimizers = ("mfac", "mfac_topk")
    c.train_limit = 512
    c.test_limit = 256
    c.val_size = 256
    c.epochs = 1
    c.tune_epochs = 1
    c.batch_size = 64
    c.seeds = 2
    c.bn_images = 128
    c.num_grads = 4
    c.adam_lr_grid = (1e-3,)
    c.mfac_lr_grid = (1e-3,)
    c.damping_grid = (1e-4,)
    c.trace_every = 1
    return c

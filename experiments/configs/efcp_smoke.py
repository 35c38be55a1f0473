"""Seconds-long smoke run of experiments/efcp.py: SmallCNN on the 8x8 digits, one epoch (BatchNorm
re-estimated on 256 training images)."""

from experiments.configs import efcp


def get_config():
    c = efcp.get_config()
    c.dataset = "digits"
    c.model = "smallcnn"
    c.epochs = 1
    c.batch_size = 64
    c.num_grads = 8
    c.ggt_num_grads = 8
    c.bn_images = 256
    return c

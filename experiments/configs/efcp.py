"""EFCP on the bundled MNIST-5k with ResNet-20: SGD, Adam, dense / top-k / low-rank M-FAC, GGT.

Same budget for every optimizer (epochs x batch size, one gradient per step). The window is
small (m = 32) so that it fills within the first epoch of this short CPU run (40 steps per
epoch); the paper uses m = 1024 on CIFAR-10. M-FAC hyperparameters follow the EFCP reference's
ResNet-20 recipe (lr 1e-3, damping 1e-4, weight decay 1e-4, no momentum, 1% top-k, rank 4).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.force_resume = False  # resume even under a config that differs from the checkpoint's
    c.dataset = "mnist5k"  # or "digits"
    c.model = "resnet20"  # or "smallcnn"
    c.num_classes = 10
    c.epochs = 4
    c.batch_size = 100
    c.seed = 0
    c.bn_images = 1000  # training images to re-estimate BatchNorm statistics before testing
    c.optimizers = ("sgd", "adam", "mfac", "mfac_topk", "mfac_lowrank", "ggt")
    # baselines
    c.sgd_lr = 0.1
    c.sgd_momentum = 0.9
    c.adam_lr = 1e-3
    c.weight_decay = 1e-4
    # M-FAC (dense and compressed)
    c.num_grads = 32
    c.mfac_lr = 0.03  # the reference's 1e-3 at m = 1024, times 1024 / m: |u| grows like m
    c.damping = 1e-4
    c.mfac_momentum = 0.0
    c.topk_fraction = 0.01
    c.rank = 4
    # GGT
    c.ggt_lr = 0.3
    c.ggt_eps = 1e-5
    c.ggt_num_grads = 32
    c.ggt_beta1 = 0.0
    return c

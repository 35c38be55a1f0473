"""A seconds-long smoke run of experiments/cram.py: SmallCNN on the 8x8 digits, two epochs."""

from experiments.configs import cram_mnist


def get_config():
    c = cram_mnist.get_config()
    c.dataset = "digits"
    c.epochs = 2
    c.batch_size = 64
    c.eval_sparsities = (0.5, 0.9)
    c.calibration_images = 256
    c.bn_iterations = 10
    c.bn_augment = True  # exercises the augmented calibration path
    c.ckpt_every = 10
    c.optimizers = ("sgd", "cram_plus_multi", "gmp")
    c.gmp_sparsities = (0.9,)
    c.gmp_update_every = 4
    c.finetune_steps = 6
    c.finetune_sparsities = (0.9,)
    return c

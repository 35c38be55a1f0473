"""CrAM vs SGD with ResNet-20 (the paper's CIFAR architecture) on the bundled MNIST-5k."""

from experiments.configs import cram_mnist


def get_config():
    c = cram_mnist.get_config()
    c.model = "resnet20"
    c.epochs = 10
    c.learning_rate = 0.1
    return c

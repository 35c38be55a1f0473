"""Full architectures and pretrained-weight import."""

from jaxcomp.models.resnet import ResNet, ResNet18, ResNet20, ResNet50, SmallCNN

__all__ = ["ResNet", "ResNet18", "ResNet20", "ResNet50", "SmallCNN"]
from jaxcomp.models import bert, weights  # noqa: E402, F401

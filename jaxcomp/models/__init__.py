"""Full architectures and pretrained-weight import."""

from jaxcomp.models.resnet import ResNet, ResNet18, ResNet20, ResNet50, SmallCNN

__all__ = ["ResNet", "ResNet18", "ResNet20", "ResNet50", "SmallCNN"]
from jaxcomp.models.clip import CLIP, CLIPConfig, load_pretrained as load_clip, load_tokenizer  # noqa: E402,I001

__all__ += ["CLIP", "CLIPConfig", "load_clip", "load_tokenizer"]

"""Full architectures and pretrained-weight import.

``resnet`` (ResNet-20/18/50, SmallCNN), ``bert`` (BERT encoder + Hugging Face safetensors loader),
``clip`` (CLIP towers + Hugging Face / OpenAI loaders), ``weights`` (safetensors helpers). Each
loader module has its own ``load_pretrained`` / ``load_tokenizer``; call them through the module
(``bert.load_pretrained(path)``, ``clip.load_pretrained(path)``).
"""

from jaxcomp.models import bert, clip, resnet, weights
from jaxcomp.models.bert import BertConfig, BertModel
from jaxcomp.models.clip import CLIP, CLIPConfig
from jaxcomp.models.resnet import (
    ResNet,
    ResNet18,
    ResNet20,
    ResNet50,
    SmallCNN,
    build_classifier,
)

__all__ = [
    "CLIP",
    "BertConfig",
    "BertModel",
    "CLIPConfig",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "ResNet50",
    "SmallCNN",
    "bert",
    "build_classifier",
    "clip",
    "resnet",
    "weights",
]

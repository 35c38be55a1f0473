"""Full architectures and pretrained-weight import.

``resnet`` (ResNet-20/18/50, SmallCNN), ``bert`` (BERT encoder + Hugging Face safetensors loader),
``clip`` (CLIP with a ViT or OpenAI's modified-ResNet image tower + Hugging Face / OpenAI loaders),
``weights`` (safetensors helpers). Each loader module has its own ``load_pretrained`` /
``load_tokenizer``; call them through the module (``bert.load_pretrained(path)``,
``clip.load_pretrained(path)``).
"""

from jaxcomp.models import bert, clip, resnet, weights
from jaxcomp.models.bert import BertConfig, BertModel
from jaxcomp.models.clip import CLIP, CLIPConfig
from jaxcomp.models.cnn32 import Cnn32, auxiliary_cnn, student_cnn
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
    "Cnn32",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "ResNet50",
    "SmallCNN",
    "auxiliary_cnn",
    "bert",
    "build_classifier",
    "clip",
    "resnet",
    "student_cnn",
    "weights",
]

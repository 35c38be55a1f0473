"""Method registry: ``build_method(name, ...)`` constructs any FewSAR method by its name.

A method registers a ``MethodSpec``: its family (``metric`` / ``finetune`` / ``meta``, the
paper's three groups), the paper, and ``build(in_channels, image_hw, num_base_classes, rngs,
**overrides) -> FewShotModel``. The protocol dispatches on the built model's ``training``
(``episodic`` / ``pretrain``) and ``test_on`` (``features`` / ``images``), so new methods
(issue 17's RFS, SKD, MAML, ANIL, R2D2, ...) only need ``register(...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import nnx

from jaxcomp.fewshot.base import FewShotModel
from jaxcomp.fewshot.finetune.baseline import Baseline, BaselinePlus
from jaxcomp.fewshot.finetune.distill import RFS, SKD
from jaxcomp.fewshot.meta import ANIL, LEO, MAML, MTL, R2D2, Versa
from jaxcomp.fewshot.metric import DN4, FEAT, ATLNet, CovaMNet, ProtoNet, RelationNet


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # "metric" | "finetune" | "meta"
    paper: str
    build: Callable[..., FewShotModel]


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.family not in ("metric", "finetune", "meta"):
        raise ValueError(f"family must be metric, finetune or meta, got {spec.family!r}")
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def method_names(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, s in REGISTRY.items() if family is None or s.family == family)


def build_method(
    name: str,
    *,
    in_channels: int,
    image_hw: tuple[int, int],
    num_base_classes: int,
    rngs: nnx.Rngs,
    **overrides,
) -> FewShotModel:
    """The model of method ``name`` for images of ``image_hw`` with ``in_channels`` channels."""
    if name not in REGISTRY:
        raise ValueError(f"unknown few-shot method {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name].build(in_channels, tuple(image_hw), num_base_classes, rngs, **overrides)


def _feat_hw(pools, image_hw):
    h, w = image_hw
    for p in pools:
        if p:
            h, w = h // 2, w // 2
    return h, w


def _num_local(pools, image_hw):
    h, w = _feat_hw(pools, image_hw)
    return h * w


def _flat_dim(image_hw, width=64):
    h, w = _feat_hw((True,) * 4, image_hw)
    return h * w * width


def _flat_head(cls, base_classes: bool = False, way_free: bool = False):
    """``build`` of a method whose heads read Conv64F's flattened features (``num_classes`` =
    the number of base classes with ``base_classes``: methods that pretrain a classifier;
    ``way_free``: heads generated per episode, for any number of ways, take no ``way``)."""

    def build(c, hw, nb, rngs, **kw):
        extra = {"num_classes": nb} if base_classes else {}
        if way_free:
            kw.pop("way", None)
        return cls(c, feat_dim=_flat_dim(hw, kw.get("width", 64)), rngs=rngs, **extra, **kw)

    return build


register(
    MethodSpec(
        "protonet",
        "metric",
        "Snell et al., Prototypical Networks, NeurIPS 2017",
        lambda c, hw, nb, rngs, **kw: ProtoNet(c, rngs=rngs, **kw),
    )
)
register(
    MethodSpec(
        "relationnet",
        "metric",
        "Sung et al., Learning to Compare: Relation Network, CVPR 2018",
        lambda c, hw, nb, rngs, **kw: RelationNet(
            c, feat_hw=_feat_hw((True, True, False, False), hw), rngs=rngs, **kw
        ),
    )
)
register(
    MethodSpec(
        "covamnet",
        "metric",
        "Li et al., Covariance Metric Networks, AAAI 2019",
        lambda c, hw, nb, rngs, **kw: CovaMNet(
            c,
            num_local=_num_local((True, True, False, False), hw),
            rngs=rngs,
            **kw,
        ),
    )
)
register(
    MethodSpec(
        "dn4",
        "metric",
        "Li et al., Revisiting Local Descriptor based Image-to-Class Measure (DN4), CVPR 2019",
        lambda c, hw, nb, rngs, **kw: DN4(c, rngs=rngs, **kw),
    )
)
register(
    MethodSpec(
        "atlnet",
        "metric",
        "Dong et al., Learning Task-aware Local Representations (ATL-Net), IJCAI 2020",
        lambda c, hw, nb, rngs, **kw: ATLNet(c, rngs=rngs, **kw),
    )
)
register(
    MethodSpec(
        "feat",
        "metric",
        "Ye et al., Few-shot Learning via Embedding Adaptation with Set-to-Set Functions, CVPR 2020",
        lambda c, hw, nb, rngs, **kw: FEAT(
            c, feat_dim=_flat_dim(hw, kw.get("width", 64)), rngs=rngs, **kw
        ),
    )
)
register(
    MethodSpec(
        "baseline",
        "finetune",
        "Chen et al., A Closer Look at Few-shot Classification, ICLR 2019",
        _flat_head(Baseline, base_classes=True),
    )
)
register(
    MethodSpec(
        "baseline_pp",
        "finetune",
        "Chen et al., A Closer Look at Few-shot Classification (Baseline++), ICLR 2019",
        _flat_head(BaselinePlus, base_classes=True),
    )
)
register(
    MethodSpec(
        "rfs",
        "finetune",
        "Tian et al., Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?, "
        "ECCV 2020",
        _flat_head(RFS, base_classes=True),
    )
)
register(
    MethodSpec(
        "skd",
        "finetune",
        "Rajasegaran et al., Self-supervised Knowledge Distillation for Few-shot Learning, "
        "BMVC 2021",
        _flat_head(SKD, base_classes=True),
    )
)
register(
    MethodSpec(
        "maml",
        "meta",
        "Finn et al., Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks, ICML 2017",
        _flat_head(MAML),
    )
)
register(
    MethodSpec(
        "anil",
        "meta",
        "Raghu et al., Rapid Learning or Feature Reuse? (ANIL), ICLR 2020",
        _flat_head(ANIL),
    )
)
register(
    MethodSpec(
        "mtl",
        "meta",
        "Sun et al., Meta-Transfer Learning for Few-Shot Learning, CVPR 2019",
        _flat_head(MTL, base_classes=True),
    )
)
register(
    MethodSpec(
        "r2d2",
        "meta",
        "Bertinetto et al., Meta-learning with differentiable closed-form solvers (R2-D2), ICLR 2019",
        lambda c, hw, nb, rngs, way=None, **kw: R2D2(c, rngs=rngs, **kw),  # any way
    )
)
register(
    MethodSpec(
        "versa",
        "meta",
        "Gordon et al., Meta-Learning Probabilistic Inference for Prediction (Versa), ICLR 2019",
        _flat_head(Versa, way_free=True),
    )
)
register(
    MethodSpec(
        "leo",
        "meta",
        "Rusu et al., Meta-Learning with Latent Embedding Optimization (LEO), ICLR 2019",
        _flat_head(LEO, way_free=True),
    )
)

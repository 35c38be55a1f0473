"""Metric-learning few-shot methods (FewSAR's metric family)."""

from jaxcomp.fewshot.metric.atlnet import ATLNet, atl_scores
from jaxcomp.fewshot.metric.covamnet import CovaMNet, class_covariance, covariance_similarity
from jaxcomp.fewshot.metric.dn4 import DN4, dn4_scores, l2_normalize, local_descriptors
from jaxcomp.fewshot.metric.feat import FEAT
from jaxcomp.fewshot.metric.protonet import (
    ProtoNet,
    euclidean_logits,
    protonet_logits,
    prototypes,
)
from jaxcomp.fewshot.metric.relationnet import RelationNet, relation_pairs

__all__ = [
    "ATLNet",
    "CovaMNet",
    "DN4",
    "FEAT",
    "ProtoNet",
    "RelationNet",
    "atl_scores",
    "class_covariance",
    "covariance_similarity",
    "dn4_scores",
    "euclidean_logits",
    "l2_normalize",
    "local_descriptors",
    "protonet_logits",
    "prototypes",
    "relation_pairs",
]

"""Few-shot classification benchmark (FewSAR, Sun et al. 2023): deterministic episodes, one
protocol, Conv64F, and the metric-learning and fine-tuning methods, selectable by name."""

from jaxcomp.fewshot.backbones import Conv64F, ResNet12, build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, episode_labels
from jaxcomp.fewshot.episodes import EpisodeSampler, EpisodeStream, check_disjoint
from jaxcomp.fewshot.protocol import (
    evaluate_episodes,
    mean_confidence_interval,
    student_t_ppf,
    test,
    train,
)
from jaxcomp.fewshot.registry import REGISTRY, MethodSpec, build_method, method_names, register

__all__ = [
    "REGISTRY",
    "Conv64F",
    "EpisodeSampler",
    "EpisodeStream",
    "FewShotModel",
    "MethodSpec",
    "ResNet12",
    "build_backbone",
    "build_method",
    "check_disjoint",
    "cross_entropy",
    "episode_labels",
    "evaluate_episodes",
    "mean_confidence_interval",
    "method_names",
    "register",
    "student_t_ppf",
    "test",
    "train",
]

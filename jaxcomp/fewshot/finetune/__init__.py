"""Fine-tuning few-shot methods: pretrain on the base classes, adapt a head per test episode."""

from jaxcomp.fewshot.finetune.baseline import Baseline, BaselinePlus, finetune_head

__all__ = ["Baseline", "BaselinePlus", "finetune_head"]

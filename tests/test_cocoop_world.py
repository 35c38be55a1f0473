"""The captioned world's tasks share one pretrained CLIP and nothing else: every task writes into
its own sub-directory (``task_dir``), and a prompt learner's stage records its
``downstream_identity``, so a run on another task or shift in the same directory is refused
instead of resuming a finished learner of the first (which has the same parameter shapes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiments import cocoop
from experiments.configs.cocoop_smoke import get_config as demo_config
from experiments.configs.cocoop_world import get_config as world_config
from jaxcomp.models import clip as clip_lib

TINY = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_clip")


def test_task_dir_names_group_prefix_and_shift():
    c = world_config()
    assert cocoop.task_dir(c) == "clothing-hflip"
    c.task.group, c.task.prefix, c.downstream_shift = "letters", "greek small", "none"
    assert cocoop.task_dir(c) == "letters-greek_small-none"
    assert cocoop.task_dir(demo_config()) == ""  # the demo keeps its outputs at the root


def test_downstream_identity_changes_with_task_shift_shots_and_pretraining():
    base = world_config()
    ident = cocoop.downstream_identity(base, "coop")
    assert ident == cocoop.downstream_identity(world_config(), "coop")
    assert ident["method"] == base.coop.to_dict()
    for edit in (
        lambda c: setattr(c.task, "group", "digits"),
        lambda c: setattr(c.task, "prefix", "greek"),
        lambda c: setattr(c, "downstream_shift", "vflip"),
        lambda c: setattr(c, "shots", 8),
        lambda c: setattr(c, "pretrain_steps", 10),
        lambda c: setattr(c.coop, "lr", 0.1),
    ):
        c = world_config()
        edit(c)
        assert cocoop.downstream_identity(c, "coop") != ident
    # the other method's config is not part of this learner's identity
    c = world_config()
    c.cocoop.lr = 0.5
    assert cocoop.downstream_identity(c, "coop") == ident


def test_a_learner_of_another_task_is_refused_not_resumed(tmp_path):
    clip = clip_lib.load_pretrained(TINY)
    tok = clip_lib.load_tokenizer(TINY)
    cfg = world_config()
    cfg.coop.steps, cfg.coop.batch_size = 4, 4
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(8, clip.config.projection_dim)).astype(np.float32)
    labels = np.tile(np.arange(2, dtype=np.int32), 4)

    def train(c):
        m = cocoop.make_learner("coop", clip, ["cat", "dog"], c.coop, tok.encode, seed=1)
        ident = cocoop.downstream_identity(c, "coop")
        return cocoop.train_prompts(m, feats, labels, c.coop, 1, tmp_path, "coop_seed1", ident)

    _, loss = train(cfg)
    _, again = train(cfg)  # the same task: the finished stage is reused
    assert again == loss
    other = world_config()
    other.coop.steps, other.coop.batch_size = 4, 4
    other.task.group = "digits"
    with pytest.raises(
        ValueError, match=r"(?s)refusing to resume.*downstream.task.group: .clothing. -> .digits."
    ):
        train(other)


def test_probe_shots_are_the_learners_shots_plus_disjoint_validation():
    labels = np.repeat(np.arange(5), 12)
    np.random.default_rng(0).shuffle(labels)
    classes = np.array([1, 3, 4])
    tr, va = cocoop.probe_shots(labels, classes, shots=4, val_shots=3, seed=7)
    np.testing.assert_array_equal(tr, cocoop.P.k_shot_indices(labels, classes, 4, seed=7))
    assert not set(tr) & set(va)
    for c in classes:
        assert (labels[tr] == c).sum() == 4 and (labels[va] == c).sum() == 3
    assert set(labels[va]) == set(classes.tolist())
    with pytest.raises(ValueError, match="fewer than k=9"):
        cocoop.probe_shots(labels, classes, shots=4, val_shots=9, seed=7)


def test_linear_probe_baseline_equals_a_direct_fit():
    """Per seed: ``P.linear_probe`` on the seed's shots, accuracy on the base test features."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8)) * 3
    ytr = np.repeat(np.arange(4), 20)
    ftr = (centres[ytr] + rng.normal(size=(80, 8))).astype(np.float32)
    base = np.array([0, 2])
    yte_global = np.repeat(base, 10)
    fte = (centres[yte_global] + rng.normal(size=(20, 8))).astype(np.float32)
    yte = np.searchsorted(base, yte_global).astype(np.int32)
    cfg = world_config()
    cfg.shots, cfg.linear_probe_val_shots, cfg.seeds = 4, 2, (1, 2)
    out = cocoop.run_linear_probe(ftr, ytr, fte, yte, base, cfg)
    for i, seed in enumerate(cfg.seeds):
        tr, va = cocoop.probe_shots(ytr, base, 4, 2, seed)
        probe = cocoop.P.linear_probe(
            ftr[tr], np.searchsorted(base, ytr[tr]), ftr[va], np.searchsorted(base, ytr[va])
        )
        acc = 100.0 * np.mean(np.asarray(probe.predict(fte)) == yte)
        assert out["base"][i] == pytest.approx(acc) and out["c"][i] == probe.c
    assert out["base_mean"] == pytest.approx(np.mean(out["base"]))
    assert out["base_mean"] > 90  # well-separated classes

"""Validate before work (issue 12): every experiment checks its whole config, before it announces
anything, touches data or creates its workdir, and a bad value is a ``ValueError`` naming the
config field and the value. Also ``check_config``'s own rules and ``workdir_path`` on a file."""

from __future__ import annotations

import importlib
import json
import math
import pathlib
import re

import ml_collections
import pytest
import test_harness

from experiments import _harness
from experiments._harness import EachRule, OptionalRule, check_config, each, optional

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = (
    "bvp",
    "cocoop",
    "cram",
    "cram_polarity",
    "efcp",
    "efcp_fidelity",
    "fewshot",
    "gntp",
    "indistill",
    "losparse",
    "losparse_polarity",
    "mixed_vocab",
    "simultaneous",
)

fake_gcs = test_harness.fake_gcs  # the fixture: gs:// served from memory through etils

# String fields that are free text (paths, titles, templates), not choices: the only fields of a
# config that need no rule.
FREE_TEXT = {
    "bvp": set(),
    "cocoop": {
        "title", "pretrain_templates", "zero_shot_templates", "ctx_init", "coop.ctx_init",
        "cocoop.ctx_init", "clip_path", "data_dir", "dataset", "train_split", "test_split",
        "world.fashion_dir", "world.zero_shot_templates.clothing",
        "world.zero_shot_templates.digits", "world.zero_shot_templates.letters", "task.prefix",
    },
    "cram": {"dataset", "data_dir", "test_split"},
    "cram_polarity": set(),
    "efcp": set(),
    "efcp_fidelity": set(),
    "fewshot": {"cache_dir", "fashion_dir", "mstar_root", "mstar_split"},
    "gntp": {
        "data_dir", "train_path", "valid_path", "test_path", "mentions_path", "templates",
        "templates_path",
    },
    "indistill": {"data_dir", "scale_note"},
    "losparse": {"model_path"},
    "losparse_polarity": set(),
    "mixed_vocab": {"model_path", "polarity_path"},
    "simultaneous": set(),
}  # fmt: skip

# Callable rules cannot be inverted automatically: one bad value each, by hand.
CALLABLE_BAD = {
    ("bvp", "png"): ["plots/a.png"],
    ("cram", "eval_nm"): [((4, 2),), ((2,),), ((True, 4),)],
    ("cram_polarity", "data_path"): [3, None],
    ("cram_polarity", "eval_nm"): [((4, 2),), ((2,),)],
    ("fewshot", "method"): ["no_such_method", "protonet,nope", "", 3],
    ("losparse_polarity", "data_path"): [3, None],
}

# The transfer protocol on CoOp's layout (cross-dataset transfer / domain generalisation).
_ZHOU = {"source": "hf", "data_format": "zhou_split", "dataset": "ImageNet", "data_dir": "/d",
         "protocol": "transfer"}  # fmt: skip

# Checks across fields (they depend only on the config, so they too come before any work).
CROSS_BAD = [
    (
        "cocoop",
        {"source": "hf", "data_format": "zhou_split", "dataset": "oxford_flowers102"},
        "config.dataset",
    ),
    ("cocoop", {"data_format": "zhou_split", "dataset": "OxfordFlowers"}, "config.data_format"),
    (
        "cocoop",
        {"source": "hf", "data_format": "zhou_split", "dataset": "DTD", "data_dir": ""},
        "config.data_dir",
    ),
    ("cocoop", {"eval_targets": ("DTD",)}, "config.eval_targets"),  # without protocol "transfer"
    ("cocoop", {"protocol": "transfer"}, "config.protocol"),  # the demo has no split files
    ("cocoop", {**_ZHOU, "dataset": "ImageNetA"}, "config.dataset"),  # test-only: no shots
    ("cocoop", {**_ZHOU, "eval_targets": ("DTD", "ImageNet")}, "config.eval_targets"),  # source
    ("cocoop", {**_ZHOU, "eval_targets": ("DTD", "DescribableTextures")}, "config.eval_targets"),
    ("cocoop", {**_ZHOU, "coop.class_specific": True}, "config.coop.class_specific"),
    ("cocoop/cocoop_world", {"world.glyph_per_class": 6}, "config.world.glyph_test_per_class"),
    ("cocoop/cocoop_world", {"world.groups": ("letters",)}, "config.task.group"),
    ("cram", {"optimizers": ("sgd", "gmp"), "gmp_begin_epoch": 25}, "config.gmp_begin_epoch"),
    ("cram_polarity", {"dev_fraction": 0.5, "test_fraction": 0.5}, "config.dev_fraction"),
    ("cram_polarity", {"finetune_sparsities": (0.95,)}, "config.finetune_sparsities"),
    ("efcp", {"bn_images": 10, "batch_size": 64}, "config.bn_images"),
    ("fewshot", {"datasets": ("fashion_mnist",), "image_size": 20}, "config.image_size"),
    ("fewshot", {"datasets": ("mstar",), "mstar_root": ""}, "config.mstar_root"),
    ("gntp", {"dataset": "tsv"}, "config.train_path"),
    ("gntp", {"dataset": "countries", "data_dir": ""}, "config.data_dir"),
    ("indistill", {"final_epoch": 12, "block_epochs": (3, 4, 5)}, "config.final_epoch"),
    ("indistill", {"teacher_epochs": (5,)}, "config.teacher_epochs"),
    ("losparse", {"min_words": 10, "max_words": 5}, "config.max_words"),
    ("losparse_polarity", {"prune_warmup": 0.5, "prune_final": 0.5}, "config.prune_warmup"),
    ("losparse_polarity", {"dev_fraction": 0.5, "test_fraction": 0.5}, "config.dev_fraction"),
    ("losparse", {"prune_warmup": 0.5, "prune_final": 0.5}, "config.prune_warmup"),
    ("mixed_vocab", {"d_s": 30, "student_heads": 4}, "config.d_s"),
    ("simultaneous", {"target_classes": (0, 0, 2)}, "config.target_classes"),
    ("simultaneous", {"max_test": 3}, "config.max_test"),
]


def _config_stems(name: str) -> list[str]:
    """The configs of experiment ``name``: its default first, then every ``<name>_*.py``."""
    module = importlib.import_module(f"experiments.{name}")
    default = pathlib.Path(module.DEFAULT_CONFIG).stem
    others = [
        p.stem
        for p in sorted((REPO / "experiments" / "configs").glob(f"{name}*.py"))
        if p.stem != "gntp_base"
        and (p.stem == name or p.stem.startswith(name + "_"))
        and not any(
            p.stem == n or p.stem.startswith(n + "_")
            for n in NAMES
            if n != name and n.startswith(name)
        )
    ]
    return [default] + [s for s in others if s != default]


def _config(stem: str):
    return importlib.import_module(f"experiments.configs.{stem}").get_config()


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _with(cfg, **values) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with dotted ``values`` set (rebuilt from a dict: no type checks)."""
    d = cfg.to_dict()
    for field, v in values.items():
        *parents, last = field.split(".")
        node = d
        for p in parents:
            node = node[p]
        node[last] = v
    return ml_collections.ConfigDict(d)


_NUM = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"


def _bad_values(rule) -> list:
    """Values that break ``rule``: out of range, not finite, the wrong type (bool is no int)."""
    if isinstance(rule, OptionalRule):
        return _bad_values(rule.rule)
    if isinstance(rule, EachRule):
        out = [(x,) for x in _bad_values(rule.rule)] + [7]  # a bad element; not a tuple
        return out if rule.allow_empty else out + [()]
    if isinstance(rule, (tuple, set, frozenset)):
        return ["no-such-choice", 3]
    if callable(rule):
        return []
    text = rule.replace(" ", "")
    if m := re.fullmatch(rf"(int)?(>=|>)({_NUM})", text):
        is_int, op, b = m.group(1), m.group(2), float(m.group(3))
        if is_int:
            b = int(b)
            return [b - 1 if op == ">=" else b, float(b + 1), True]
        return [b - 1.0 if op == ">=" else b, -math.inf, math.nan, math.inf, True, "1"]
    if m := re.fullmatch(rf"(int)?([\[(])({_NUM}),({_NUM})([\])])", text):
        is_int, left, lo, hi, right = m.groups()
        lo, hi = float(lo), float(hi)
        if is_int:
            return [int(lo) - 1, int(hi) + 1, float(lo)]
        out = [lo - 0.5, hi + 0.5, math.nan, math.inf, "0.5"]
        return out + ([lo] if left == "(" else []) + ([hi] if right == ")" else [])
    raise AssertionError(f"no bad values for rule {rule!r}")


def _forbid_work(monkeypatch, module):
    """Every announcement, log line or print of the experiment fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError(f"work started before the config was checked: {args}")

    monkeypatch.setattr(_harness, "announce", fail)
    for name in ("announce", "log", "say", "_log", "print"):
        monkeypatch.setattr(module, name, fail, raising=False)


def _assert_refused(module, cfg, tmp_path, *needles):
    workdir = tmp_path / "w"
    with pytest.raises(ValueError) as info:
        module.run(cfg, str(workdir))
    for needle in needles:
        assert needle in str(info.value), (needles, str(info.value))
    assert not workdir.exists(), "the workdir was created before the config was checked"


@pytest.mark.parametrize("name", NAMES)
def test_every_bad_value_is_refused_before_any_work(name, tmp_path, monkeypatch):
    module = importlib.import_module(f"experiments.{name}")
    _forbid_work(monkeypatch, module)
    configs = [_config(s) for s in _config_stems(name)]
    tried = 0
    for field, rule in module.CONFIG_RULES.items():
        base = next(c for c in configs if _harness._lookup(c, field)[0])
        bad = _bad_values(rule) + CALLABLE_BAD.get((name, field), [])
        assert bad, f"{name}: no bad value for {field} ({rule!r})"
        for value in bad:
            shown = value[0] if isinstance(value, tuple) and len(value) == 1 else value
            _assert_refused(module, _with(base, **{field: value}), tmp_path, f"config.{field}",
                            repr(shown))  # fmt: skip
            tried += 1
    assert tried >= 2 * len(module.CONFIG_RULES)


@pytest.mark.parametrize("name,values,needle", CROSS_BAD, ids=[c[0] for c in CROSS_BAD])
def test_checks_across_fields_come_before_any_work(name, values, needle, tmp_path, monkeypatch):
    name, _, stem = name.partition("/")  # "experiment/config" when not the default config
    module = importlib.import_module(f"experiments.{name}")
    _forbid_work(monkeypatch, module)
    cfg = _config(stem or _config_stems(name)[0])
    _assert_refused(module, _with(cfg, **values), tmp_path, needle)


@pytest.mark.parametrize("name", NAMES)
def test_rules_cover_every_number_and_choice_and_every_config_passes(name):
    module = importlib.import_module(f"experiments.{name}")
    rules = module.CONFIG_RULES
    stems = _config_stems(name)
    assert f"{name}_smoke" in stems, stems
    seen = set()
    for stem in stems:
        cfg = _config(stem)
        check_config(cfg, rules)  # every shipped config (default, smoke, variants) passes
        for field, v in _leaves(cfg):
            seen.add(field)
            if isinstance(v, bool) or field == "force_resume":
                continue
            assert field in rules or field in FREE_TEXT[name], (
                f"{name} ({stem}): config.{field} = {v!r} has no rule in CONFIG_RULES"
            )
    assert set(rules) <= seen, f"{name}: rules for fields no config has: {set(rules) - seen}"
    assert not FREE_TEXT[name] & set(rules)


def test_coop_imagenet_transfer_config_passes_the_cocoop_rules():
    """The real-run config of the transfer protocol (not named cocoop_*, so checked here)."""
    module = importlib.import_module("experiments.cocoop")
    cfg = _config("coop_imagenet_transfer")
    check_config(cfg, module.CONFIG_RULES)
    module.check_data(cfg)
    for field, v in _leaves(cfg):
        if not isinstance(v, bool) and field != "force_resume":
            assert field in module.CONFIG_RULES or field in FREE_TEXT["cocoop"], field
    assert (cfg.protocol, cfg.dataset, cfg.shots) == ("transfer", "ImageNet", 16)
    assert len(cfg.eval_targets) == 14 and "ImageNet" not in cfg.eval_targets
    assert set(cfg.eval_targets) == set(module.coop_data.known_datasets()) - {
        "ImageNet", "DTD", "Flowers102"
    }  # the 10 other data sets and the 4 variants, by their Dassl names  # fmt: skip
    # CoOp's ImageNet recipe: 50 epochs of 16 x 1000 / 32 = 500 steps, 1 warm-up epoch
    assert (cfg.coop.n_ctx, cfg.coop.steps, cfg.coop.warmup_steps) == (16, 25000, 500)


def test_cram_keeps_its_messages():
    cram = importlib.import_module("experiments.cram")
    cfg = _config("cram_smoke")
    for field, value, message in (
        ("batch_size", 0, "config.batch_size must be an int >= 1, got 0"),
        ("epochs", -1, "config.epochs must be an int >= 1, got -1"),
        ("num_classes", True, "config.num_classes must be an int >= 1, got True"),
        ("ckpt_every", -2, "config.ckpt_every must be an int >= 0, got -2"),
        ("optimizers", (), "config.optimizers must be a non-empty tuple, got ()"),
        ("rho", -1.0, "config.rho must be a finite number >= 0, got -1.0"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            check_config(_with(cfg, **{field: value}), cram.CONFIG_RULES)


def test_workdir_path_refuses_an_existing_file(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("not a directory")
    with pytest.raises(ValueError, match=re.escape(f"workdir {f} exists and is not a directory")):
        _harness.workdir_path(str(f))
    assert f.read_text() == "not a directory"
    d = _harness.workdir_path(tmp_path / "a" / "b")
    assert d.is_dir() and _harness.workdir_path(d) == d  # existing directory: fine


def test_an_experiment_refuses_a_file_as_workdir(tmp_path, monkeypatch):
    bvp = importlib.import_module("experiments.bvp")
    _forbid_work(monkeypatch, bvp)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        bvp.run(_config("bvp_smoke"), str(f))


# ----------------------------------------------------------------------------------------------
# check_config itself


def _error(cfg, rules) -> str:
    with pytest.raises(ValueError) as info:
        check_config(ml_collections.ConfigDict(cfg), rules)
    return str(info.value)


def test_int_rules():
    check_config({"a": 1, "b": 0, "c": 5}, {"a": "int>=1", "b": "int>=0", "c": "int>4"})
    assert _error({"a": 0}, {"a": "int>=1"}) == "config.a must be an int >= 1, got 0"
    assert _error({"a": -1}, {"a": "int>=0"}) == "config.a must be an int >= 0, got -1"
    assert _error({"a": 4}, {"a": "int>4"}) == "config.a must be an int > 4, got 4"
    assert _error({"a": 2.0}, {"a": "int>=1"}) == "config.a must be an int >= 1, got 2.0"
    assert _error({"a": True}, {"a": "int>=0"}) == "config.a must be an int >= 0, got True"
    import numpy as np

    check_config({"a": np.int32(3)}, {"a": "int>=1"})
    with pytest.raises(ValueError, match="got np.True_|got True"):
        check_config({"a": np.bool_(True)}, {"a": "int>=0"})


def test_number_rules_refuse_nan_inf_bool_and_strings():
    check_config({"a": 1e-9, "b": 0, "c": 0.0}, {"a": ">0", "b": ">=0", "c": ">=0"})
    assert _error({"a": 0.0}, {"a": ">0"}) == "config.a must be a finite number > 0, got 0.0"
    assert _error({"a": -1}, {"a": ">=0"}) == "config.a must be a finite number >= 0, got -1"
    for bad in (math.nan, math.inf, -math.inf, True, "1", None):
        assert _error({"a": bad}, {"a": ">0"}).endswith(f"got {bad!r}")
    assert _error({"a": 3.0}, {"a": "<2.5"}) == "config.a must be a finite number < 2.5, got 3.0"


def test_interval_rules():
    rules = {"a": "[0,1]", "b": "[0,1)", "c": "(0,1]", "d": "int[2,60]"}
    check_config({"a": 0.0, "b": 0, "c": 1.0, "d": 60}, rules)
    check_config({"a": 1, "b": 0.999, "c": 1e-6, "d": 2}, rules)
    assert _error({"a": 1.5}, rules) == "config.a must be a number in [0, 1], got 1.5"
    assert _error({"b": 1.0}, rules) == "config.b must be a number in [0, 1), got 1.0"
    assert _error({"c": 0.0}, rules) == "config.c must be a number in (0, 1], got 0.0"
    assert _error({"d": 61}, rules) == "config.d must be an int in [2, 60], got 61"
    assert _error({"d": 3.0}, rules) == "config.d must be an int in [2, 60], got 3.0"
    assert _error({"a": math.nan}, rules) == "config.a must be a number in [0, 1], got nan"
    assert _error({"a": False}, rules) == "config.a must be a number in [0, 1], got False"


def test_choice_rules():
    rules = {"p": ("log", "linear"), "q": {"b", "a"}}
    check_config({"p": "linear", "q": "a"}, rules)
    assert _error({"p": "cubic"}, rules) == "config.p must be one of 'log', 'linear', got 'cubic'"
    assert _error({"q": "c"}, rules) == "config.q must be one of 'a', 'b', got 'c'"
    assert _error({"p": 1}, rules).endswith("got 1")
    assert _error({"x": True}, {"x": (1, 2)}) == "config.x must be one of 1, 2, got True"


def test_tuple_rules_check_every_element():
    rules = {"seeds": each("int>=0"), "m": each(("a", "b")), "e": each("[0,1)", allow_empty=True)}
    check_config({"seeds": (0, 1, 2), "m": ("b",), "e": ()}, rules)
    check_config({"seeds": [3], "m": ["a", "a"], "e": [0.5]}, rules)
    assert _error({"seeds": (0, -1)}, rules) == "config.seeds[1] must be an int >= 0, got -1"
    assert _error({"seeds": ()}, rules) == "config.seeds must be a non-empty tuple, got ()"
    assert _error({"seeds": 3}, rules) == "config.seeds must be a tuple, got 3"
    assert _error({"m": ("a", "z")}, rules) == "config.m[1] must be one of 'a', 'b', got 'z'"
    assert _error({"e": (0.5, 1.0)}, rules) == "config.e[1] must be a number in [0, 1), got 1.0"


def test_nested_optional_callable_and_missing_fields():
    cfg = {"coop": {"lr": 0.1, "steps": 3}, "max_test": None, "png": "a.png"}

    def file_name(v):
        return None if "/" not in v else "must be a file name"

    rules = {
        "coop.lr": ">0",
        "coop.steps": "int>=1",
        "max_test": optional("int>=1"),
        "png": file_name,
        "absent": "int>=1",  # variants of a config differ: a missing field is not checked
        "coop.absent": ">0",
    }
    check_config(ml_collections.ConfigDict(cfg), rules)
    assert _error({**cfg, "coop": {"lr": -0.1, "steps": 3}}, rules) == (
        "config.coop.lr must be a finite number > 0, got -0.1"
    )
    assert _error({**cfg, "max_test": 0}, rules) == "config.max_test must be an int >= 1, got 0"
    assert (
        _error({**cfg, "png": "d/a.png"}, rules) == "config.png must be a file name, got 'd/a.png'"
    )
    with pytest.raises(ValueError, match="unknown config rule"):
        check_config({"a": 1}, {"a": "integer please"})


def test_first_violation_in_rule_order_is_reported():
    rules = {"a": "int>=1", "b": ">0"}
    assert _error({"a": 0, "b": -1.0}, rules).startswith("config.a ")


# ----------------------------------------------------------------------------------------------
# Few-shot results on a gs:// workdir (issue 11): rows, summary, table and figure land in the
# bucket, the local-only cell lock is skipped, nothing is written to the local disk.


def test_fewshot_summary_and_cells_on_a_gs_workdir(tmp_path, monkeypatch, fake_gcs):
    from etils import epath

    fewshot = importlib.import_module("experiments.fewshot")
    monkeypatch.chdir(tmp_path)
    workdir = epath.Path("gs://bucket/fs")
    row = {"dataset": "glyphs_small", "method": "protonet", "family": "metric", "shot": 1,
           "accuracy": 0.25, "ci95": 0.04, "train_time_s": 10.0, "test_ms_per_episode": 5.0}  # fmt: skip
    cell = workdir / "glyphs_small" / "protonet"
    assert fewshot._lock(cell)  # no O_EXCL lock file on an object store
    (cell / "1shot.json").write_text(json.dumps(row))
    summary = fewshot.summarize(workdir, _config("fewshot_smoke"))
    assert summary["rows"] == [row]
    assert "| protonet | 25.00 ± 4.00 |" in summary["table"]
    written = json.loads(fake_gcs["gs://bucket/fs/results.json"].getvalue())
    assert written["table"] == summary["table"]
    assert fake_gcs["gs://bucket/fs/results.md"].getvalue().decode().startswith(summary["table"])
    png = fake_gcs["gs://bucket/fs/accuracy_vs_train_time.png"].getvalue()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [k for k in fake_gcs if ".tmp" in k or k.endswith(".lock")], sorted(fake_gcs)
    assert not any(tmp_path.iterdir()), "a gs:// workdir wrote to the local disk"


def test_figures_overwrite_on_a_gs_workdir(tmp_path, monkeypatch, fake_gcs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    for size in (2, 3):  # fewshot rewrites its figure after every method
        _harness.write_figure("gs://bucket/fig.png", plt.figure(figsize=(size, size)), dpi=10)
    assert fake_gcs["gs://bucket/fig.png"].getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(fake_gcs) == ["gs://bucket/fig.png"]
    assert not any(tmp_path.iterdir())


def test_results_overwrite_on_a_gs_workdir(tmp_path, monkeypatch, fake_gcs):
    monkeypatch.chdir(tmp_path)
    _harness.write_json_atomic("gs://bucket/results.json", {"rows": 1})
    _harness.write_json_atomic("gs://bucket/results.json", {"rows": 2})  # fewshot, losparse, ...
    assert json.loads(fake_gcs["gs://bucket/results.json"].getvalue()) == {"rows": 2}

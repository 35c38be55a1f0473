"""Base-to-new generalisation of prompt learning: zero-shot CLIP vs CoOp vs CoCoOp.

    python -m experiments.cocoop --config=experiments/configs/cocoop.py --workdir=runs/cocoop

Protocol (CoCoOp, Zhou et al. CVPR 2022, Sec. 4.1): classes are sorted and split in half, the
first ceil(n/2) are *base*, the rest *new*; prompts are learned from K shots per base class; the
learned prompts are evaluated on base test images (among base classes) and, unchanged, on new
test images (among new classes); H is the harmonic mean. Zero-shot CLIP with hand-written
templates is the baseline. K-shot sets and prompt initialisation depend on the seed; we report
mean and std over seeds. With ``config.linear_probe_val_shots > 0`` (not on the split-file path)
results.json also holds CoOp's linear-probe baseline on the base classes (``run_linear_probe``:
the same K shots per seed, ``C`` searched on that many further shots per class).

``config.source``:
* ``"vlworld"`` (runs offline, ``configs/cocoop_world.py``): a small CLIP pretrained on the
  captioned world of ``jaxcomp.data.vlworld``; one task (``config.task``) per run, in its own
  ``task_dir``.
* ``"mnist_demo"`` (runs offline): no pretrained CLIP exists here, so a small CLIP is first
  pretrained contrastively on MNIST-5k training digits with template captions ("a photo of the
  number seven."); its tokenizer is a word-level vocabulary of the caption words. The
  downstream few-shot task then uses the training/held-out test digits under a domain shift
  (``config.downstream_shift``, default mirrored), since on the pretraining distribution
  itself zero-shot accuracy already equals a linear probe and there is nothing to learn.
* ``"hf"``: a Hugging Face CLIP checkpoint directory (``config.clip_path``, e.g. ViT-B/16) and
  either a prepared TFDS dataset (``config.data_format="tfds"``: ``config.dataset`` under
  ``config.data_dir``) or, as the papers, one of CoOp's 11 data sets in CoOp's layout with its
  ``split_zhou_<Dataset>.json`` (``config.data_format="zhou_split"``: ``config.data_dir`` the data
  root, ``config.dataset`` a CoOp name such as ``"OxfordFlowers"``; ``jaxcomp.data.coop``). The
  split-file path samples ``shots`` per class with Dassl's sampler for every seed, keeps the base
  half, and decodes only those images (and the test images) from disk; the zero-shot baseline
  uses the data set's hand-written template (CoOp's ``CUSTOM_TEMPLATES``).

``config.protocol``: ``"base_to_new"`` (default, above) or ``"transfer"`` (split-file path only):
CoOp's and CoCoOp's cross-dataset transfer and domain generalisation (CoOp Sec. 4.3, CoCoOp
Sec. 5.2-5.3). Prompts learn from ``shots`` per class of *all* classes of ``config.dataset``
(ImageNet in the papers; Dassl's sampler per seed), are evaluated on its test set, then unchanged
on the test set of every data set in ``config.eval_targets`` with that set's own class names
(other CoOp data sets: cross-dataset transfer; ``ImageNetV2``, ``ImageNetSketch``, ``ImageNetA``,
``ImageNetR``: domain generalisation); zero-shot CLIP uses each set's own template. results.json
has per-seed accuracies, mean/std per data set and the averages over the targets.

The CLIP is frozen and there is no data augmentation, so image features are computed once and
prompt learners are trained with ``logits_from_features``.

Stages (each trained by ``jaxcomp.train.fit`` in its own sub-workdir, with checkpoints and
``metrics.jsonl``): ``pretrain-<hash of the pretraining config>`` (demo CLIP; a rerun with the same
pretraining config reuses it), then ``<method>_seed<seed>`` per prompt learner. On the captioned
world (``source="vlworld"``) the learners, results.json and the plot go to the task's own
sub-directory (``task_dir``, e.g. ``letters-greek-hflip/``), so tasks share the pretrained CLIP
and nothing else. A learner's stage records its ``downstream_identity`` (method config, task,
shift, shots, pretraining key): a rerun that differs in any of them is refused, never resumed.
"""

from __future__ import annotations

import json
import math
import re
import time

import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from experiments._harness import (
    TableStream,
    announce,
    check_config,
    cli,
    concatenated_permutation_indices,
    each,
    fit_stage,
    optional,
    own,
    progress,
    workdir_path,
    write_bytes_atomic,
    write_figure,
    write_json_atomic,
)
from jaxcomp.data import coop as coop_data
from jaxcomp.data import glyphs as _glyphs
from jaxcomp.models import clip as clip_lib
from jaxcomp.nn import prompts as P
from jaxcomp.train import make_train_step

DEFAULT_CONFIG = "experiments/configs/cocoop.py"
DEFAULT_WORKDIR = "runs/cocoop"

# Every value a run needs, checked before any work (``check_config``, named by its field).
CONFIG_RULES = {
    "source": ("mnist_demo", "vlworld", "hf"),
    "data_format": ("tfds", "zhou_split"),
    "protocol": ("base_to_new", "transfer"),
    "eval_targets": each(tuple(coop_data.known_datasets()), allow_empty=True),
    "model.width": "int>=1",
    "model.layers": "int>=1",
    "model.heads": "int>=1",
    "model.patch_size": "int>=1",
    "model.context_length": "int>=1",
    "model.projection_dim": "int>=1",
    "pretrain_seed": "int>=0",
    "pretrain_steps": "int>=1",
    "pretrain_batch": "int>=1",
    "pretrain_lr": ">0",
    "ckpt_every": "int>=0",
    "log_every": "int>=0",
    "downstream_shift": ("none", "vflip", "hflip", "invert"),
    "max_test": optional("int>=1"),
    "shots": "int>=1",
    "linear_probe_val_shots": "int>=0",
    "seeds": each("int>=0"),
    "methods": each(("coop", "cocoop")),
    "coop.n_ctx": "int>=0",
    "coop.class_token_position": P.CLASS_TOKEN_POSITIONS,
    "coop.lr": ">0",
    "coop.momentum": "[0,1)",
    "coop.steps": "int>=1",
    "coop.batch_size": "int>=1",
    "coop.weight_decay": ">=0",
    "coop.warmup_steps": "int>=0",
    "coop.warmup_lr": ">0",
    "coop.steps_per_epoch": "int>=1",
    "cocoop.n_ctx": "int>=0",
    "cocoop.lr": ">0",
    "cocoop.momentum": "[0,1)",
    "cocoop.steps": "int>=1",
    "cocoop.batch_size": "int>=1",
    "cocoop.weight_decay": ">=0",
    "cocoop.warmup_steps": "int>=0",
    "cocoop.warmup_lr": ">0",
    "cocoop.steps_per_epoch": "int>=1",
    "cocoop.chunk_size": "int>=1",
    # source "vlworld" (configs/cocoop_world.py)
    "world.groups": each(("clothing", "digits", "letters")),
    "world.scripts": each(tuple(sorted(_glyphs.SCRIPTS)), allow_empty=True),
    "world.glyph_per_class": "int>=2",
    "world.glyph_test_per_class": "int>=1",
    "world.seed": "int>=0",
    "task.group": ("clothing", "digits", "letters"),
}

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --------------------------------------------------------------------------------------------
# Demo: a small CLIP pretrained on MNIST-5k with template captions
# --------------------------------------------------------------------------------------------


class WordTokenizer:
    """Word-level tokenizer with OpenAI's layout: ``[SOS] words [EOS]``, EOS the largest id."""

    def __init__(self, texts: list[str]):
        words = sorted({w for t in texts for w in self.split(t)})
        self.vocab = {w: i + 1 for i, w in enumerate(words)}  # 0 is padding
        self.sot_id = len(self.vocab) + 1
        self.eot_id = len(self.vocab) + 2
        self.vocab_size = self.eot_id + 1

    @staticmethod
    def split(text: str) -> list[str]:
        return text.lower().replace(".", " .").split()

    def encode(self, text: str) -> list[int]:
        unknown = [w for w in self.split(text) if w not in self.vocab]
        if unknown:
            raise ValueError(f"words {unknown} of {text!r} are not in the vocabulary")
        return [self.sot_id, *(self.vocab[w] for w in self.split(text)), self.eot_id]

    def __call__(self, texts: list[str], length: int) -> np.ndarray:
        out = np.zeros((len(texts), length), np.int32)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = ids
        return out


def _load_mnist(cfg):
    from jaxcomp.data import load_mnist5k

    xtr, ytr = load_mnist5k("train")
    xte, yte = load_mnist5k("test")
    norm = lambda x: ((x.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    return norm(xtr), ytr, norm(xte), yte


def _shift(images: np.ndarray, kind: str) -> np.ndarray:
    if kind == "none":
        return images
    if kind == "vflip":  # upside down
        return np.ascontiguousarray(images[:, ::-1])
    if kind == "hflip":  # mirrored
        return np.ascontiguousarray(images[:, :, ::-1])
    if kind == "invert":  # negative image (dark strokes on a light background)
        return np.ascontiguousarray(images.max() + images.min() - images)
    raise ValueError(f"downstream_shift must be 'none', 'vflip', 'hflip' or 'invert', got {kind!r}")


def _demo_clip(cfg, vocab_size: int) -> clip_lib.CLIP:
    """The small CLIP of ``cfg.model`` for 28x28 grayscale images, randomly initialised."""
    m = cfg.model
    config = clip_lib.CLIPConfig(
        image_size=28, patch_size=m.patch_size, num_channels=1, vision_width=m.width,
        vision_layers=m.layers, vision_heads=m.heads, vision_mlp_dim=4 * m.width,
        vocab_size=vocab_size, context_length=m.context_length, text_width=m.width,
        text_layers=m.layers, text_heads=m.heads, text_mlp_dim=4 * m.width,
        projection_dim=m.projection_dim,
    )  # fmt: skip
    return clip_lib.CLIP(config, rngs=nnx.Rngs(cfg.pretrain_seed))


def _contrastive_pretrain(cfg, model, images, labels, index, ids, workdir):
    """CLIP's contrastive loss (CLIP Fig. 3 pseudo-code) over ``pretrain_steps`` batches: step
    ``i`` pairs ``images[index[i]]`` with the caption ids ``ids[i]``. Captions of the same class
    are positives too (no false negatives in a batch). Returns ``(model, seconds)``."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.pretrain_lr, cfg.pretrain_steps // 10, cfg.pretrain_steps
    )
    tx = optax.adamw(schedule, weight_decay=0.1)
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    params, state = nnx.as_pure(params), nnx.as_pure(state)

    def loss_fn(params, state, batch):
        model = nnx.merge(graphdef, params, state)
        img = model.encode_image(batch["x"])
        txt = model.encode_text(batch["ids"])
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        logits = jnp.exp(jnp.minimum(model.logit_scale[...], math.log(100))) * img @ txt.T
        y = batch["y"]
        same = (y[:, None] == y[None, :]).astype(jnp.float32)
        target = same / same.sum(-1, keepdims=True)
        loss = 0.5 * (optax.softmax_cross_entropy(logits, target).mean()
                      + optax.softmax_cross_entropy(logits.T, target.T).mean())  # fmt: skip
        return loss, (nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), {})

    stream = TableStream(
        {"x": images, "y": labels.astype(np.int32)},
        index,
        seed=cfg.pretrain_seed,
        batch_size=cfg.pretrain_batch,
        per_step={"ids": ids},
    )
    t0 = time.time()
    params, state, _, _ = fit_stage(
        make_train_step(loss_fn, tx),
        params,
        state,
        tx.init(params),
        stream,
        cfg.pretrain_steps,
        workdir=workdir,
        stage=f"pretrain-{_config_key(cfg)}",  # same pretraining config -> same stage, reused
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        config=_pretrain_config(cfg),  # a downstream-only change reuses the pretrained CLIP
    )
    return nnx.merge(graphdef, params, state), time.time() - t0


def pretrain_demo_clip(cfg, images, labels, workdir):
    """Contrastive pretraining on digit images with template captions."""
    announce("building the demo CLIP and its word-level tokenizer")
    templates = list(cfg.pretrain_templates)
    tok = WordTokenizer([t.format(d) for t in templates + list(cfg.zero_shot_templates)
                         for d in DIGITS] + [cfg.ctx_init or ""])  # fmt: skip
    model = _demo_clip(cfg, tok.vocab_size)
    length = cfg.model.context_length
    # Caption token ids for every (template, digit) pair; a caption is drawn per image per step.
    captions = np.stack([tok([t.format(d) for d in DIGITS], length) for t in templates])
    # Every step's images and captions, drawn up front in the order of the original loop.
    rng = np.random.default_rng(cfg.pretrain_seed)
    index = np.empty((cfg.pretrain_steps, cfg.pretrain_batch), np.int64)
    ids = np.empty((cfg.pretrain_steps, cfg.pretrain_batch, length), np.int32)
    for i in range(cfg.pretrain_steps):
        index[i] = rng.choice(len(labels), cfg.pretrain_batch, replace=False)
        ids[i] = captions[rng.integers(len(templates), size=cfg.pretrain_batch), labels[index[i]]]
    model, seconds = _contrastive_pretrain(cfg, model, images, labels, index, ids, workdir)
    return model, tok, seconds


# --------------------------------------------------------------------------------------------
# The captioned world: Fashion-MNIST + MNIST-5k + DejaVu glyphs (jaxcomp.data.vlworld)
# --------------------------------------------------------------------------------------------


def load_world(cfg, workdir: epath.Path, split: str):
    """``cfg.world``'s images of ``split`` (a ``vlworld.CaptionedImages``); the glyphs are
    rendered once into ``workdir/glyph_cache``."""
    from jaxcomp.data import vlworld

    w = cfg.world
    return vlworld.build_world(
        split,
        groups=tuple(w.groups),
        glyph_cache=workdir / "glyph_cache",
        scripts=tuple(w.scripts) or None,
        glyph_per_class=w.glyph_per_class,
        glyph_test_per_class=w.glyph_test_per_class,
        fashion_dir=w.fashion_dir or None,
        seed=w.seed,
    )


def world_tokenizer(cfg, world) -> WordTokenizer:
    """Word vocabulary of every pretraining caption and every zero-shot prompt of the world (one
    tokenizer, whatever the downstream task); checks ``model.context_length``."""
    texts = world.all_captions()
    for group, templates in cfg.world.zero_shot_templates.items():
        names = world.class_names[world.group_classes(group)] if group in world.class_groups else []
        texts += [t.format(n) for t in templates for n in names]
    tok = WordTokenizer(texts)
    longest = max(len(tok.encode(t)) for t in texts)
    if longest > cfg.model.context_length:
        raise ValueError(f"config.model.context_length={cfg.model.context_length} is shorter than "
                         f"the longest caption ({longest} tokens with SOS/EOS)")  # fmt: skip
    return tok


def pretrain_world_clip(cfg, world, images, workdir):
    """Contrastive pretraining on the captioned world: each step draws ``pretrain_batch`` images
    and one caption per image (a random template of its group, with its class name and font)."""
    announce("building the world CLIP and its word-level tokenizer")
    tok = world_tokenizer(cfg, world)
    model = _demo_clip(cfg, tok.vocab_size)
    rng = np.random.default_rng(cfg.pretrain_seed)
    steps, batch, length = cfg.pretrain_steps, cfg.pretrain_batch, cfg.model.context_length
    index = np.stack([rng.choice(len(world), batch, replace=False) for _ in range(steps)])
    ids = tok(world.captions(rng, index.reshape(-1)), length).reshape(steps, batch, length)
    model, seconds = _contrastive_pretrain(cfg, model, images, world.labels, index, ids, workdir)
    return model, tok, seconds


def world_task(cfg, world):
    """Global class indices of the downstream task: ``cfg.task.group``'s classes whose names start
    with ``cfg.task.prefix``."""
    classes = world.group_classes(cfg.task.group)
    keep = np.char.startswith(world.class_names[classes].astype(str), cfg.task.prefix)
    if keep.sum() < 2:
        raise ValueError(f"config.task.prefix {cfg.task.prefix!r} leaves {int(keep.sum())} classes "
                         f"of group {cfg.task.group!r}; base-to-new needs at least 2")  # fmt: skip
    return classes[keep]


_PRETRAIN_KEYS = ("model", "pretrain_seed", "pretrain_steps", "pretrain_batch", "pretrain_lr",
                  "pretrain_templates", "zero_shot_templates", "ctx_init")  # fmt: skip


_WORLD_PRETRAIN_KEYS = ("source", "model", "pretrain_seed", "pretrain_steps", "pretrain_batch",
                        "pretrain_lr", "world")  # fmt: skip


def _pretrain_config(cfg) -> dict:
    """The fields of ``cfg`` that determine the pretrained demo CLIP (the world's CLIP does not
    depend on the downstream task, so every task of one world shares it)."""
    keys = _WORLD_PRETRAIN_KEYS if cfg.source == "vlworld" else _PRETRAIN_KEYS
    return {k: cfg[k].to_dict() if hasattr(cfg[k], "to_dict") else cfg[k] for k in keys}


def _config_key(cfg) -> str:
    import hashlib

    text = json.dumps(_pretrain_config(cfg), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


_DOWNSTREAM_KEYS = ("source", "dataset", "data_format", "protocol", "shots", "downstream_shift",
                    "task")  # fmt: skip


def downstream_identity(cfg, method: str) -> dict:
    """What a prompt learner's stage was trained on: the method's config plus the downstream
    fields (task, shift, shots, data) and, for the CLIPs pretrained here, the pretraining key.
    ``fit`` refuses to resume a stage whose identity differs, so a run on another task or shift
    in the same directory can never pick up a finished learner of the first."""
    down = {k: cfg[k] for k in _DOWNSTREAM_KEYS if k in cfg}
    down = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in down.items()}
    if cfg.source in ("mnist_demo", "vlworld"):
        down["pretrain"] = _config_key(cfg)
    return {"method": cfg[method].to_dict(), "downstream": down}


def task_dir(cfg) -> str:
    """The sub-directory of the workdir that holds one downstream task's outputs on the
    captioned world (its tasks share the pretrained CLIP at the workdir's root): e.g.
    ``letters-greek-hflip``; ``""`` for the other sources (outputs at the root)."""
    if cfg.source != "vlworld":
        return ""
    parts = [cfg.task.group, cfg.task.prefix, cfg.downstream_shift]
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(x)) for x in parts if x)


# --------------------------------------------------------------------------------------------
# Real CLIP + TFDS
# --------------------------------------------------------------------------------------------


def _data_dir(cfg) -> epath.Path:
    data_dir = epath.Path(cfg.data_dir)
    return data_dir.expanduser() if cfg.data_dir.startswith("~") else data_dir


def _load_tfds(cfg, image_size):  # pragma: no cover - needs the data set on disk
    import tensorflow_datasets as tfds
    from PIL import Image

    from jaxcomp.data import coop as coop_data
    from jaxcomp.data.tfds import latest_version

    root = _data_dir(cfg) / cfg.dataset
    if not root.is_dir():
        raise FileNotFoundError(f"no prepared TFDS dataset {cfg.dataset!r} under {cfg.data_dir}")
    version = latest_version([v.name for v in root.iterdir()], str(root))  # 1.10.0 after 1.9.0
    builder = tfds.builder_from_directory(root / version)
    classnames = list(builder.info.features["label"].names)

    def read(split, limit):
        source = builder.as_data_source(split=split)
        n = len(source) if limit is None else min(limit, len(source))
        xs, ys = [], []
        for i in range(n):
            r = source[i]
            img = Image.fromarray(np.asarray(r["image"])).convert("RGB")
            img = coop_data.resize_center_crop(img, image_size)  # CLIP's eval transform
            xs.append(coop_data.normalize(np.asarray(img)))
            ys.append(int(r["label"]))
        return np.stack(xs).astype(np.float32), np.asarray(ys, np.int32)

    xtr, ytr = read(cfg.train_split, None)
    xte, yte = read(cfg.test_split, cfg.get("max_test"))
    return xtr, ytr, xte, yte, [c.replace("_", " ") for c in classnames]


class _Decoded:
    """Slices of an ``ImageFileSource`` as stacked arrays (what ``image_features`` reads), each
    decoded from disk when sliced."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.source.images(index)


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(n)`` (all of them without a limit): a capped
    test set still covers every class of a split file listed class by class."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _test_set(cfg, name: str, splits: dict, image_size: int) -> dict:
    """A data set's test images decoded on access (at most ``max_test``, spread evenly), their
    labels, its ``classnames`` as prompts spell them and its zero-shot ``template``."""
    names = coop_data.classnames_of(*splits.values())
    test = splits["test"]
    test = [test[i] for i in evenly_spaced(len(test), cfg.get("max_test"))]
    source = coop_data.ImageFileSource(test, image_size=image_size)
    return {
        "test": _Decoded(source),
        "test_labels": source.labels,
        "classnames": [coop_data.prompt_classname(c) for c in names],
        "template": coop_data.coop_dataset(name).template,
    }


def load_zhou_split(cfg, image_size: int) -> dict:
    """CoOp's protocol on a data set in CoOp's layout (``jaxcomp.data.coop``): the split file's
    train / test lists, per seed ``generate_fewshot_dataset(train, shots, seed=seed)`` restricted
    to the base half of the classes (all classes with ``protocol="transfer"``), decoded lazily.
    Returns the decoded-on-access ``train`` images (the union of every seed's shots, nothing
    else) and ``test`` images, their labels in the full label space, ``shots`` (seed -> indices
    into ``train``), the split's ``labels`` (for the base/new halves), the ``classnames`` as
    prompts spell them and the zero-shot ``template``; with ``protocol="transfer"`` also
    ``targets``: ``{Dassl name: the same test fields}`` for every ``eval_targets`` entry."""
    root = _data_dir(cfg)
    splits = coop_data.load_coop_dataset(root, cfg.dataset)
    train = splits["train"]
    transfer = cfg.get("protocol", "base_to_new") == "transfer"
    keep = {d.label for d in train} if transfer else set(coop_data.base_new_labels(train)[0])
    union: dict[coop_data.Datum, int] = {}
    shots = {}
    for seed in cfg.seeds:
        picked = coop_data.generate_fewshot_dataset(train, cfg.shots, seed=seed)
        picked = [d for d in picked if d.label in keep]
        shots[seed] = np.asarray([union.setdefault(d, len(union)) for d in picked], np.int64)
    train_src = coop_data.ImageFileSource(list(union), image_size=image_size)
    out = {
        "train": _Decoded(train_src),
        "train_labels": train_src.labels,
        "shots": shots,
        "labels": np.asarray([d.label for d in train], np.int32),
        **_test_set(cfg, cfg.dataset, splits, image_size),
    }
    if transfer:
        out["targets"] = {}
        for target in cfg.eval_targets:
            name = coop_data.canonical_name(target)
            target_splits = coop_data.load_coop_dataset(root, name)
            out["targets"][name] = _test_set(cfg, name, target_splits, image_size)
    return out


def check_data(cfg) -> None:
    """Checks across fields of the data options and the protocol, before any work."""
    if cfg.source == "vlworld":
        w = cfg.world
        if w.glyph_test_per_class >= w.glyph_per_class:
            raise ValueError(f"config.world.glyph_test_per_class must be below glyph_per_class "
                             f"({w.glyph_per_class}), got {w.glyph_test_per_class}")  # fmt: skip
        if cfg.task.group not in w.groups:
            raise ValueError(f"config.task.group must be one of config.world.groups {w.groups}, "
                             f"got {cfg.task.group!r}")  # fmt: skip
        if not tuple(w.zero_shot_templates.get(cfg.task.group, ())):
            raise ValueError("config.world.zero_shot_templates must give templates for the task "
                             f"group {cfg.task.group!r}")  # fmt: skip
    protocol = cfg.get("protocol", "base_to_new")
    targets = tuple(cfg.get("eval_targets", ()))
    if targets and protocol != "transfer":
        raise ValueError(f"config.eval_targets {targets} need config.protocol 'transfer', got "
                         f"{protocol!r}")  # fmt: skip
    if protocol == "transfer" and cfg.get("data_format", "tfds") != "zhou_split":
        raise ValueError("config.protocol 'transfer' needs config.data_format 'zhou_split' (CoOp's "
                         f"layout), got {cfg.get('data_format', 'tfds')!r}")  # fmt: skip
    if cfg.get("data_format", "tfds") != "zhou_split":
        return
    if cfg.source != "hf":
        raise ValueError(f"config.data_format 'zhou_split' needs config.source 'hf', got "
                         f"{cfg.source!r}")  # fmt: skip
    known = sorted(coop_data.COOP_DATASETS) + sorted(coop_data.DATASET_ALIASES)
    if cfg.get("dataset") in coop_data.IMAGENET_VARIANTS:
        raise ValueError(f"config.dataset {cfg.dataset!r} has only a test split, so prompts cannot "
                         "learn on it; use it in config.eval_targets (protocol 'transfer')")  # fmt: skip
    if cfg.get("dataset") not in known:
        raise ValueError(f"config.dataset must be a CoOp data set {known} with data_format "
                         f"'zhou_split', got {cfg.get('dataset')!r}")  # fmt: skip
    if not cfg.get("data_dir"):
        raise ValueError("config.data_dir must be the CoOp data root with data_format "
                         f"'zhou_split', got {cfg.get('data_dir')!r}")  # fmt: skip
    if protocol == "transfer":
        _check_transfer(cfg, targets)


def _check_transfer(cfg, targets: tuple) -> None:
    source = coop_data.canonical_name(cfg.dataset)
    seen: dict[str, str] = {}
    for t in targets:
        name = coop_data.canonical_name(t)
        if name == source:
            raise ValueError(f"config.eval_targets lists {t!r}, the source config.dataset "
                             f"{cfg.dataset!r} (its test set is always evaluated)")  # fmt: skip
        if name in seen:
            raise ValueError(f"config.eval_targets lists {name!r} twice ({seen[name]!r}, {t!r})")
        seen[name] = t
    if "coop" in cfg.methods and cfg.coop.get("class_specific", False):
        raise ValueError("config.coop.class_specific: a class-specific context has one context "
                         "per source class and does not move to a target's classes; protocol "
                         "'transfer' needs a unified context (class_specific=False)")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prompt learning and evaluation
# --------------------------------------------------------------------------------------------


_encode_image = nnx.jit(lambda c, x: c.encode_image(x))


def ci95(values) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t, ddof 1); 0 for fewer
    than two values."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def image_features(clip, images, batch=256, desc="image features"):
    """The frozen CLIP's image features of ``images`` (an array, or anything sliced into one),
    ``batch`` at a time. A short chunk is padded with zero images to ``batch`` rows (to the next
    power of two for a set smaller than ``batch``), so a few compiled shapes serve every data set;
    the padding's features are dropped (each image's features depend on that image only)."""
    size = batch if len(images) >= batch else 1 << max(0, len(images) - 1).bit_length()
    out = []
    for i in progress(range(0, len(images), batch), desc=desc):
        x = np.asarray(images[i : i + batch])
        n = len(x)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(_encode_image(clip, x))[:n])
    return np.concatenate(out)


def accuracy(logits_fn, feats, labels, batch=100):
    preds = [np.asarray(logits_fn(feats[i : i + batch])).argmax(-1)
             for i in range(0, len(feats), batch)]  # fmt: skip
    return 100.0 * float((np.concatenate(preds) == labels).mean())


_learner_logits = nnx.jit(lambda m, f: m.logits_from_features(f))


def learner_accuracy(model, feats, labels) -> float:
    """Top-1 accuracy (%) of a prompt learner on precomputed image features."""
    return accuracy(lambda f: _learner_logits(model, f), feats, labels)


def zero_shot_accuracy(clip, classnames, templates, tokenize, feats, labels) -> float:
    """Top-1 accuracy (%) of zero-shot CLIP (``zero_shot_classifier`` over ``templates``) on
    precomputed image features."""
    w = P.zero_shot_classifier(clip, classnames, templates, tokenize=tokenize)
    scale = float(jnp.exp(clip.logit_scale[...]))
    fn = lambda f: scale * (f / np.linalg.norm(f, axis=-1, keepdims=True)) @ w.T
    return accuracy(fn, feats, labels)


def make_learner(method: str, clip, classnames, mcfg, tokenize, seed: int):
    """The untrained ``P.CoOp`` / ``P.CoCoOp`` of ``method`` with the options of ``mcfg``."""
    kwargs = dict(tokenize=tokenize, n_ctx=mcfg.n_ctx or None, ctx_init=mcfg.ctx_init or None,
                  rngs=nnx.Rngs(seed))  # fmt: skip
    if method == "coop":
        return P.CoOp(clip, classnames, class_specific=mcfg.class_specific,
                      class_token_position=mcfg.class_token_position, **kwargs)  # fmt: skip
    return P.CoCoOp(clip, classnames, chunk_size=mcfg.chunk_size, **kwargs)


def prompt_schedule(cfg) -> optax.Schedule:
    """CoOp's learning rate (Dassl's ``build_lr_scheduler``): ``warmup_steps`` at the constant
    ``warmup_lr``, then cosine from ``lr`` to 0 over the remaining steps, stepped once per
    ``steps_per_epoch`` steps (Dassl steps its scheduler per epoch; 1 = per step). With
    ``warmup_steps = 0`` and ``steps_per_epoch = 1`` it is the plain per-step cosine."""
    warmup = cfg.get("warmup_steps", 0)
    per_epoch = max(1, cfg.get("steps_per_epoch", 1))
    cosine = optax.cosine_decay_schedule(cfg.lr, max(1, cfg.steps - warmup))

    def schedule(count):
        t = count - warmup
        t = (t // per_epoch) * per_epoch
        return jnp.where(count < warmup, cfg.get("warmup_lr", 1e-5), cosine(jnp.maximum(t, 0)))

    return schedule


def prompt_optimizer(cfg) -> optax.GradientTransformation:
    """SGD with momentum on the prompt parameters; ``weight_decay`` is added to the gradient
    before momentum (PyTorch SGD's L2, as the CoOp recipe's 5e-4)."""
    sgd = optax.sgd(prompt_schedule(cfg), momentum=cfg.momentum)
    wd = cfg.get("weight_decay", 0.0)
    return optax.chain(optax.add_decayed_weights(wd), sgd) if wd else sgd


def probe_shots(labels, classes, shots: int, val_shots: int, seed: int):
    """The linear probe's training and validation indices for one seed: the prompt learners'
    ``shots`` per class (``P.k_shot_indices``, the same draw) and ``val_shots`` more per class
    from the remaining training images (a few-shot validation set, as Dassl's
    ``min(shots, 4)``), disjoint from them."""
    train_idx = P.k_shot_indices(labels, classes, shots, seed=seed)
    rest = np.setdiff1d(np.flatnonzero(np.isin(labels, classes)), train_idx)
    val_idx = rest[P.k_shot_indices(np.asarray(labels)[rest], classes, val_shots, seed=seed)]
    return train_idx, val_idx


def run_linear_probe(ftr, ytr, test_feats, test_labels, classes, cfg) -> dict:
    """CoOp's linear-probe CLIP baseline on the base classes, per seed: logistic regression on
    the frozen features of the same K shots the prompt learners see, ``C`` searched on
    ``linear_probe_val_shots`` further shots per class (``P.linear_probe``), accuracy (%) on
    the base test images. A linear probe has no classifier for unseen classes, so it has no new
    or H column."""
    out = {"base": [], "c": [], "val_accuracy": []}
    for seed in cfg.seeds:
        tr, va = probe_shots(ytr, classes, cfg.shots, cfg.linear_probe_val_shots, seed)
        y_tr = np.searchsorted(classes, ytr[tr]).astype(np.int32)
        y_va = np.searchsorted(classes, ytr[va]).astype(np.int32)
        probe = P.linear_probe(ftr[tr], y_tr, ftr[va], y_va)
        acc = 100.0 * float(np.mean(np.asarray(probe.predict(test_feats)) == test_labels))
        out["base"].append(acc)
        out["c"].append(probe.c)
        out["val_accuracy"].append(100.0 * probe.val_accuracy)
        print(f"linear probe seed {seed}: base {acc:.2f} (C={probe.c:.3g})", flush=True)
    out["base_mean"] = float(np.mean(out["base"]))
    out["base_std"] = float(np.std(out["base"]))
    out["base_ci95"] = ci95(out["base"])
    return out


def train_prompts(model, feats, labels, cfg, seed, workdir, stage, identity=None):
    """SGD + cosine on cross-entropy over the prompt parameters only (CoOp Sec. 4.1), through
    ``fit`` in ``workdir/stage``; returns ``(trained model, final loss)``. ``identity`` (default:
    ``cfg``) is the config ``fit`` records and checks on resume (see ``downstream_identity``)."""
    tx = prompt_optimizer(cfg)
    graphdef, params, rest = nnx.split(model, P.PromptParam, ...)
    # Copies: the frozen CLIP is shared with the next runs, and the train step donates its inputs.
    params, rest = own(nnx.as_pure(params)), own(nnx.as_pure(rest))

    def loss_fn(params, rest, batch):
        m = nnx.merge(graphdef, params, rest)
        logits = m.logits_from_features(batch["f"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (nnx.as_pure(nnx.state(m, nnx.Not(P.PromptParam))), {})

    index = concatenated_permutation_indices(
        len(labels), cfg.batch_size, cfg.steps, np.random.default_rng(seed)
    )
    stream = TableStream({"f": feats, "y": labels}, index, seed=seed, batch_size=cfg.batch_size)
    params, rest, _, history = fit_stage(
        make_train_step(loss_fn, tx),
        params,
        rest,
        tx.init(params),
        stream,
        cfg.steps,
        workdir=workdir,
        stage=stage,
        log_every=10,
        config=cfg if identity is None else identity,
    )
    return nnx.merge(graphdef, params, rest), history[-1]["loss"] if history else float("nan")


def run(cfg, workdir: str) -> dict:
    """Zero-shot, then every prompt learner of ``cfg.methods`` for every seed; results.json and
    cocoop.png in ``workdir`` (on the captioned world in ``workdir/<task_dir(cfg)>``)."""
    check_config(cfg, CONFIG_RULES)
    check_data(cfg)
    workdir = workdir_path(workdir)
    t_start = time.time()
    shot_index, label_pool = None, None  # the split-file path's own K shots and label set
    zero_shot_templates = list(cfg.zero_shot_templates)
    if cfg.source == "mnist_demo":
        announce("loading MNIST-5k")
        xtr, ytr, xte, yte = _load_mnist(cfg)
        clip, tok, pretrain_s = pretrain_demo_clip(cfg, xtr, ytr, workdir)
        # The downstream task sees the digits under a domain shift the pretraining never saw
        # (as real CLIP meets new datasets): features stay separable, image-text alignment drops.
        xtr, xte = _shift(xtr, cfg.downstream_shift), _shift(xte, cfg.downstream_shift)
        classnames = list(DIGITS)
        tokenize = tok.encode
    elif cfg.source == "vlworld":
        announce("building the captioned world (Fashion-MNIST, MNIST-5k, DejaVu glyphs)")
        world_tr, world_te = load_world(cfg, workdir, "train"), load_world(cfg, workdir, "test")
        norm = lambda x: ((x.astype(np.float32) / 255.0) - 0.5) / 0.5
        clip, tok, pretrain_s = pretrain_world_clip(cfg, world_tr, norm(world_tr.images), workdir)
        classes = world_task(cfg, world_tr)
        tr, te = np.isin(world_tr.labels, classes), np.isin(world_te.labels, classes)
        # The task's images under the downstream shift (on uint8 pixels), labels 0..C-1.
        xtr = norm(_shift(world_tr.images[tr], cfg.downstream_shift))
        xte = norm(_shift(world_te.images[te], cfg.downstream_shift))
        ytr = np.searchsorted(classes, world_tr.labels[tr]).astype(np.int32)
        yte = np.searchsorted(classes, world_te.labels[te]).astype(np.int32)
        classnames = [str(n) for n in world_tr.class_names[classes]]
        zero_shot_templates = list(cfg.world.zero_shot_templates[cfg.task.group])
        tokenize = tok.encode
    elif cfg.source == "hf":
        announce(f"loading CLIP from {cfg.clip_path} and {cfg.dataset} from {cfg.data_dir}")
        clip = clip_lib.load_pretrained(cfg.clip_path)
        tokenize = clip_lib.load_tokenizer(cfg.clip_path).encode
        if cfg.get("data_format", "tfds") == "zhou_split":
            data = load_zhou_split(cfg, clip.config.image_size)
            if cfg.get("protocol", "base_to_new") == "transfer":
                return run_transfer(cfg, workdir, clip, tokenize, data, t_start)
            xtr, ytr, xte, yte = (
                data["train"],
                data["train_labels"],
                data["test"],
                data["test_labels"],
            )
            classnames, shot_index, label_pool = data["classnames"], data["shots"], data["labels"]
            zero_shot_templates = [data["template"]]
        else:  # pragma: no cover - needs a prepared TFDS data set
            xtr, ytr, xte, yte, classnames = _load_tfds(cfg, clip.config.image_size)
        pretrain_s = 0.0
    else:
        raise ValueError(
            f"config.source must be 'mnist_demo', 'vlworld' or 'hf', got {cfg.source!r}"
        )

    # The captioned world's tasks share the pretrained CLIP (workdir root); each task's learners,
    # results.json and plot go to its own sub-directory.
    out_dir = workdir / task_dir(cfg) if task_dir(cfg) else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    announce("computing the frozen CLIP's image features")
    ftr = image_features(clip, xtr, desc="train image features")
    fte = image_features(clip, xte, desc="test image features")
    base, new = P.base_new_split(np.concatenate([ytr, yte]) if label_pool is None else label_pool)
    names = {"base": [classnames[c] for c in base], "new": [classnames[c] for c in new]}
    test = {}
    for group, classes in (("base", base), ("new", new)):
        mask = np.isin(yte, classes)
        test[group] = (fte[mask], np.searchsorted(classes, yte[mask]).astype(np.int32))

    results = {"zero_shot": {}}
    announce("zero-shot evaluation")
    for group in ("base", "new"):
        results["zero_shot"][group] = [zero_shot_accuracy(clip, names[group], zero_shot_templates,
                                                          tokenize, *test[group])]  # fmt: skip
    print(f"zero-shot: {results['zero_shot']}", flush=True)
    probe = None
    if cfg.get("linear_probe_val_shots", 0) and shot_index is None:
        announce("linear probe on the base classes")
        probe = run_linear_probe(ftr, ytr, *test["base"], base, cfg)

    for method in cfg.methods:
        mcfg = cfg[method]
        per_seed = {"base": [], "new": [], "H": [], "final_loss": [], "train_s": []}
        for seed in cfg.seeds:
            if shot_index is not None:  # Dassl's sampler over the split file, base half
                idx = shot_index[seed]
            else:
                idx = P.k_shot_indices(ytr, base, cfg.shots, seed=seed)
            f, y = ftr[idx], np.searchsorted(base, ytr[idx]).astype(np.int32)
            model = make_learner(method, clip, names["base"], mcfg, tokenize, seed)
            t0 = time.time()
            stage = f"{method}_seed{seed}"
            model, loss = train_prompts(model, f, y, mcfg, seed, out_dir, stage,
                                        downstream_identity(cfg, method))  # fmt: skip
            per_seed["train_s"].append(time.time() - t0)
            per_seed["final_loss"].append(loss)
            announce(f"{stage}: evaluating on base and new classes")
            for group in ("base", "new"):
                m = model if group == "base" else model.with_classnames(
                    names["new"], tokenize=tokenize)  # fmt: skip
                per_seed[group].append(learner_accuracy(m, *test[group]))
            per_seed["H"].append(P.harmonic_mean(per_seed["base"][-1], per_seed["new"][-1]))
            print(f"{method} seed {seed}: base {per_seed['base'][-1]:.2f} new "
                  f"{per_seed['new'][-1]:.2f} H {per_seed['H'][-1]:.2f} (loss {loss:.3f}, "
                  f"{per_seed['train_s'][-1]:.0f}s)", flush=True)  # fmt: skip
        results[method] = per_seed

    summary = {}
    for method, r in results.items():
        b, n = float(np.mean(r["base"])), float(np.mean(r["new"]))
        summary[method] = {
            "base_mean": b,
            "base_std": float(np.std(r["base"])),
            "new_mean": n,
            "new_std": float(np.std(r["new"])),
            "H": P.harmonic_mean(b, n),  # H of the mean accuracies, as in the CoCoOp tables
            "H_std_over_seeds": float(
                np.std([P.harmonic_mean(x, z) for x, z in zip(r["base"], r["new"])])
            ),  # fmt: skip
            # 95% CI half-widths over seeds (Student t, ddof 1); 0 for one value (zero-shot)
            "base_ci95": ci95(r["base"]),
            "new_ci95": ci95(r["new"]),
            "H_ci95": ci95([P.harmonic_mean(x, z) for x, z in zip(r["base"], r["new"])]),
        }
    out = {
        "config": cfg.to_dict(),
        "classes": {"base": names["base"], "new": names["new"]},
        "pretrain_seconds": pretrain_s,
        "total_seconds": time.time() - t_start,
        "per_seed": results,
        "summary": summary,
        "note": "shared 2-core CPU (other processes running); timings are indicative only",
    }
    if probe is not None:
        out["linear_probe"] = probe
    write_json_atomic(out_dir / "results.json", out)
    title = cfg.get("title", "")
    if cfg.source == "vlworld" and not title:  # name the task, so every task's plot differs
        task = cfg.task.group + (f" '{cfg.task.prefix}*'" if cfg.task.prefix else "")
        title = f"captioned world, {task} ({len(classnames)} classes), {cfg.shots} shots"
    if cfg.source in ("mnist_demo", "vlworld"):
        title += f", shift={cfg.downstream_shift}"
    _plot(summary, out_dir / "cocoop.png", title)
    _print_table(summary)
    if probe is not None:
        print(f"| linear probe | {probe['base_mean']:.2f} ± {probe['base_std']:.2f} | - | - |")
    return out


# --------------------------------------------------------------------------------------------
# Cross-dataset transfer and domain generalisation (protocol "transfer")
# --------------------------------------------------------------------------------------------


def run_transfer(cfg, workdir: epath.Path, clip, tokenize, data: dict, t_start: float) -> dict:
    """CoOp / CoCoOp's transfer protocol on ``load_zhou_split``'s ``data``: zero-shot CLIP and
    every learner of ``cfg.methods`` per seed, trained on K shots of all source classes, then
    evaluated on the source test set and on every target's test set with the target's class
    names (``with_classnames``) and, for zero-shot, its template. Each seed's learned prompts
    are saved to ``<method>_seed<seed>/prompts.safetensors``; results.json and transfer.png."""
    source = coop_data.canonical_name(cfg.dataset)
    sets = {source: data, **data["targets"]}
    announce("computing the frozen CLIP's image features")
    ftr = image_features(clip, data["train"], desc="train image features")
    feats = {name: image_features(clip, s["test"], desc=f"{name} test image features")
             for name, s in sets.items()}  # fmt: skip

    announce("zero-shot evaluation (each data set with its own template)")
    results = {"zero_shot": {name: [zero_shot_accuracy(clip, s["classnames"], [s["template"]],
                                                       tokenize, feats[name], s["test_labels"])]
                             for name, s in sets.items()}}  # fmt: skip
    print(f"zero-shot: {results['zero_shot']}", flush=True)
    for method in cfg.methods:
        mcfg = cfg[method]
        per_seed = {**{name: [] for name in sets}, "final_loss": [], "train_s": []}
        for seed in cfg.seeds:
            idx = data["shots"][seed]  # Dassl's sampler over the source's train split, all classes
            model = make_learner(method, clip, data["classnames"], mcfg, tokenize, seed)
            t0 = time.time()
            stage = f"{method}_seed{seed}"
            model, loss = train_prompts(model, ftr[idx], data["train_labels"][idx], mcfg, seed,
                                        workdir, stage, downstream_identity(cfg, method))  # fmt: skip
            per_seed["train_s"].append(time.time() - t0)
            per_seed["final_loss"].append(loss)
            _save_prompts(model, workdir / stage / "prompts.safetensors")
            announce(f"{stage}: evaluating on {source} and {len(sets) - 1} target(s)")
            for name, s in sets.items():
                m = model if name == source else model.with_classnames(s["classnames"],
                                                                       tokenize=tokenize)  # fmt: skip
                per_seed[name].append(learner_accuracy(m, feats[name], s["test_labels"]))
            print(f"{method} seed {seed}: " + ", ".join(f"{n} {per_seed[n][-1]:.2f}" for n in sets)
                  + f" (loss {loss:.3f}, {per_seed['train_s'][-1]:.0f}s)", flush=True)  # fmt: skip
        results[method] = per_seed

    summary = transfer_summary(results, source, list(data["targets"]))
    out = {
        "config": cfg.to_dict(),
        "protocol": "transfer",
        "source": source,
        "targets": list(data["targets"]),
        "classes": {name: s["classnames"] for name, s in sets.items()},
        "test_images": {name: len(s["test_labels"]) for name, s in sets.items()},
        "total_seconds": time.time() - t_start,
        "per_seed": results,
        "summary": summary,
        "note": "shared 2-core CPU (other processes running); timings are indicative only",
    }
    write_json_atomic(workdir / "results.json", out)
    groups = [source, *data["targets"], *(k for k in summary["zero_shot"] if k in AVERAGES)]
    series = {m: ([s[g]["mean"] for g in groups], [s[g]["std"] for g in groups])
              for m, s in summary.items()}  # fmt: skip
    _bar_plot(groups, series, workdir / "transfer.png", cfg.get("title", "") or
              f"prompts learned on {source}, evaluated on other data sets",
              "error bars: std over seeds")  # fmt: skip
    _print_transfer_table(summary, groups)
    return out


#: The averages of the transfer tables: over every target, over the other data sets (CoCoOp
#: Table 2, cross-dataset) and over the ImageNet variants (domain generalisation).
AVERAGES = ("average_targets", "average_cross_dataset", "average_domain_generalisation")


def transfer_summary(results: dict, source: str, targets: list[str]) -> dict:
    """``{method: {data set: {"mean", "std"}}}`` over seeds, plus each non-empty average of
    ``AVERAGES``: the mean over seeds of the per-seed mean over its targets (= the mean of the
    targets' means, as the papers' tables), its std over seeds, and ``of``, the targets."""
    groups = dict(zip(AVERAGES, (
        targets,
        [t for t in targets if t not in coop_data.IMAGENET_VARIANTS],
        [t for t in targets if t in coop_data.IMAGENET_VARIANTS],
    )))  # fmt: skip
    summary = {}
    for method, r in results.items():
        s = {n: {"mean": float(np.mean(r[n])), "std": float(np.std(r[n]))}
             for n in [source, *targets]}  # fmt: skip
        for key, names in groups.items():
            if names:
                per_seed = np.mean([r[n] for n in names], axis=0)
                s[key] = {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
                          "of": names}  # fmt: skip
        summary[method] = s
    return summary


def _save_prompts(model, path: epath.Path) -> None:
    """``P.save_prompts`` to any ``epath`` (a local temporary file, then copied atomically)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = epath.Path(tmp) / "prompts.safetensors"
        P.save_prompts(model, local)
        write_bytes_atomic(path, local.read_bytes())


def _print_transfer_table(summary, groups):
    print("| method | " + " | ".join(groups) + " |\n|---|" + "---|" * len(groups))
    for method, s in summary.items():
        print(f"| {method} | " + " | ".join(f"{s[g]['mean']:.2f} ± {s[g]['std']:.2f}"
                                           for g in groups) + " |")  # fmt: skip


def _print_table(summary):
    print("| method | base | new | H |\n|---|---|---|---|")
    for method, s in summary.items():
        print(f"| {method} | {s['base_mean']:.2f} ± {s['base_std']:.2f} | "
              f"{s['new_mean']:.2f} ± {s['new_std']:.2f} | {s['H']:.2f} |")  # fmt: skip


def _plot(summary, path: epath.Path, title):
    groups = ["base", "new", "H"]
    series = {m: ([s["base_mean"], s["new_mean"], s["H"]],
                  [s["base_std"], s["new_std"], s["H_std_over_seeds"]])
              for m, s in summary.items()}  # fmt: skip
    _bar_plot(groups, series, path, title or "base-to-new generalisation",
              "error bars: std over seeds (H: std of the per-seed harmonic means)")  # fmt: skip


def _bar_plot(groups, series, path: epath.Path, title, note):
    """Grouped bars: ``series[method] = (values per group, error bars per group)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(series)
    x = np.arange(len(groups))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(groups) + 2), 3.5))
    for i, m in enumerate(methods):
        vals, errs = series[m]
        bars = ax.bar(x + i * width, vals, width, yerr=errs, capsize=3, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, groups,
                  rotation=30 if len(groups) > 3 else 0, fontsize=8)  # fmt: skip
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)  # bars start at 0
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(note, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=120)


if __name__ == "__main__":
    cli(run, DEFAULT_CONFIG, DEFAULT_WORKDIR)

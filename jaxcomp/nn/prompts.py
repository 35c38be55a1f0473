"""Prompt learning for CLIP-like models: CoOp and CoCoOp, and the base-to-new protocol.

* CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, Sec. 3.2): the
  prompt fed to the frozen text encoder is ``[SOS][V]_1 ... [V]_M [CLASS]. [EOS]`` where the ``M``
  context vectors ``[V]_m`` are learned; they are shared by all classes (*unified*) or one set per
  class (*class-specific*, CSC), and the class token can sit at the ``end``, ``middle`` or
  ``front`` (Eq. 2-3). Classification is Eq. 1: ``softmax_i(cos(g(t_i), f) / tau)``.
* CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022,
  Sec. 3.2): a light meta-net ``h = Linear(d_vis, d_vis // 16) -> ReLU -> Linear(d_ctx)`` maps the
  L2-normalised image feature ``x`` to a token ``pi = h(x)`` that is added to every context vector,
  ``v_m(x) = v_m + pi`` (Eq. 4), so each image gets its own prompts (Eq. 5).

Only the prompt parameters train: they are :class:`PromptParam` variables (not ``nnx.Param``), so
``nnx.Optimizer(model, tx, wrt=PromptParam)`` / ``nnx.DiffState(0, PromptParam)`` select exactly
them while the wrapped CLIP stays frozen.

CoCoOp needs ``batch x classes`` text-encoder passes. The reference implementation is limited to
batch size 1; here the per-image text passes run under ``lax.map`` in chunks of ``chunk_size``
images, each chunk rematerialised (``jax.checkpoint``), so activation memory is that of
``chunk_size`` images whatever the batch size.

The CLIP model is duck-typed: it needs ``embed_tokens(ids)``, ``encode_text_embeddings(emb, ids)``
(pooled at ``argmax(ids)``, or at the first ``config.eos_token_id`` when the config sets one;
every prompt is checked at build time to pool at its EOS token), ``encode_image(pixels)``, a
``logit_scale`` variable and ``config.projection_dim`` / ``config.context_length``, as
:class:`jaxcomp.models.clip.CLIP` has.

Learned prompts are saved and loaded with :func:`save_prompts` / :func:`load_prompts`
(safetensors) and read as words with :func:`interpret_prompt` (CoOp Sec. 5).

Base-to-new protocol (CoCoOp Sec. 4.1): :func:`base_new_split`, :func:`k_shot_indices`,
:func:`harmonic_mean`, and the zero-shot CLIP baseline with prompt templates,
:func:`zero_shot_classifier` (CLIP Sec. 3.1.4, prompt ensembling), and the linear-probe
baseline :func:`linear_probe` (logistic regression on frozen features, ``C`` searched on a
validation split, as CoOp's ``lpclip``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

__all__ = [
    "LINEAR_PROBE_GRID",
    "CoCoOp",
    "CoOp",
    "LinearProbe",
    "PromptBuffer",
    "PromptParam",
    "PromptWords",
    "base_new_split",
    "fit_logistic_regression",
    "harmonic_mean",
    "interpret_prompt",
    "k_shot_indices",
    "linear_probe",
    "load_prompts",
    "save_prompts",
    "zero_shot_classifier",
]

Tokenize = Callable[[str], Sequence[int]]
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class PromptParam(nnx.Variable):
    """A learnable prompt parameter (context vectors, meta-net weights); not an ``nnx.Param``."""


class PromptBuffer(nnx.Variable):
    """A constant of a prompt learner (frozen token embeddings, token ids, index tables)."""


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _token_layout(tokenize: Tokenize) -> tuple[int, int]:
    """``(sos_id, eos_id)`` of ``tokenize``, which must wrap text as ``[SOS] ... [EOS]``."""
    empty = list(tokenize(""))
    if len(empty) != 2:
        raise ValueError(
            f"tokenize('') must return exactly [SOS, EOS], got {empty}; pass a tokenizer that "
            "adds start/end tokens"
        )
    return empty[0], empty[1]


def _check_pooling(
    clip: Any, ids: np.ndarray, eos_positions: Sequence[int], eos: int, labels: Sequence[str]
) -> None:
    """Check that the text encoder pools each prompt at its EOS token.

    With ``clip.config.eos_token_id`` unset the encoder pools at ``argmax(ids)`` (OpenAI CLIP),
    which is the EOS only if EOS is the largest id of the prompt (and its first maximum); with it
    set, at the first position of that id (Hugging Face), which must then be the tokenizer's EOS.
    Otherwise the features would silently come from another token; ``ValueError`` names the prompt.
    """
    eos_token_id = getattr(getattr(clip, "config", None), "eos_token_id", None)
    if eos_token_id is not None and eos != eos_token_id:
        raise ValueError(
            f"the tokenizer's EOS id {eos} is not the text encoder's eos_token_id "
            f"{eos_token_id}: the encoder would pool at the wrong token"
        )
    for row, pos, label in zip(ids, eos_positions, labels):
        if eos_token_id is None:
            got = int(np.argmax(row))
            if got != pos:
                raise ValueError(
                    f"prompt {label!r}: the text encoder pools at argmax(ids), but id "
                    f"{int(row[got])} at position {got} is >= the EOS id {eos} at position {pos}; "
                    "use a tokenizer whose EOS is the largest id or set config.eos_token_id"
                )
        else:
            got = int(np.argmax(row == eos_token_id))
            if got != pos:
                raise ValueError(
                    f"prompt {label!r}: eos_token_id {eos_token_id} first occurs at position "
                    f"{got}, before the EOS at position {pos}; the encoder pools at the first one"
                )


class _PromptBase(nnx.Module):
    """Builds the frozen parts of ``[SOS][V]_1..[V]_M [CLASS]{class_suffix}[EOS]`` per class."""

    def __init__(
        self,
        clip: Any,
        classnames: Sequence[str],
        *,
        tokenize: Tokenize,
        n_ctx: int | None,
        ctx_init: str | None,
        class_specific: bool,
        class_token_position: str,
        class_suffix: str,
        rngs: nnx.Rngs,
    ):
        if len(classnames) == 0:
            raise ValueError("classnames is empty")
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, "
                f"got {class_token_position!r}"
            )
        self.clip = clip
        self._options = (n_ctx, ctx_init, class_specific, class_token_position, class_suffix)
        self.classnames = tuple(name.replace("_", " ") for name in classnames)
        self.n_cls = len(self.classnames)
        self.class_token_position = class_token_position
        sos, eos = _token_layout(tokenize)
        ctx_dim = clip.embed_tokens(jnp.zeros((1, 1), jnp.int32)).shape[-1]
        context_length = clip.config.context_length

        if ctx_init:
            init_ids = list(tokenize(ctx_init.replace("_", " ")))[1:-1]
            if n_ctx is not None and n_ctx != len(init_ids):
                raise ValueError(
                    f"n_ctx={n_ctx} but ctx_init {ctx_init!r} is {len(init_ids)} tokens; "
                    "pass n_ctx=None or a matching number"
                )
            n_ctx = len(init_ids)
            ctx = clip.embed_tokens(jnp.asarray([init_ids], jnp.int32))[0]  # (n_ctx, dim)
            if class_specific:
                ctx = jnp.tile(ctx[None], (self.n_cls, 1, 1))
            placeholder = init_ids
        else:
            if n_ctx is None or n_ctx < 1:
                raise ValueError(f"n_ctx must be a positive int without ctx_init, got {n_ctx}")
            shape = (self.n_cls, n_ctx, ctx_dim) if class_specific else (n_ctx, ctx_dim)
            ctx = 0.02 * jax.random.normal(rngs.params(), shape)  # N(0, 0.02), CoOp Sec. 4.1
            placeholder = [sos] * n_ctx  # any id below EOS: these positions are replaced
        self.n_ctx = n_ctx
        self.ctx = PromptParam(jnp.asarray(ctx, jnp.float32))

        rows, name_lens = [], []
        for name in self.classnames:
            name_ids = list(tokenize(name))[1:-1]
            tail = list(tokenize(f"{name}{class_suffix}"))[1:]  # CLASS tokens, suffix, EOS
            if tail[-1] != eos or tail[: len(name_ids)] != name_ids:
                raise ValueError(f"tokenize({name!r}) does not end with the EOS token {eos}")
            ids = [sos, *placeholder, *tail]
            if len(ids) > context_length:
                raise ValueError(
                    f"prompt for class {name!r} is {len(ids)} tokens, more than the text "
                    f"encoder's context length {context_length}"
                )
            rows.append(ids)
            name_lens.append(len(name_ids))
        # Pad only to the longest prompt: positions after EOS never reach the EOT feature
        # (causal mask), so this equals padding to the full context length, and is cheaper.
        length = max(map(len, rows))
        ids = np.zeros((self.n_cls, length), np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        emb = clip.embed_tokens(jnp.asarray(ids))
        self.token_prefix = PromptBuffer(emb[:, :1])  # SOS
        self.token_suffix = PromptBuffer(emb[:, 1 + n_ctx :])  # CLASS, suffix, EOS, padding
        # Permutation of positions that moves the class tokens (CoOp Sec. 3.2, "middle"/"front").
        order = np.tile(np.arange(length), (self.n_cls, 1))
        for i, n in enumerate(name_lens):
            ctx_pos = list(range(1, 1 + n_ctx))
            name_pos = list(range(1 + n_ctx, 1 + n_ctx + n))
            if class_token_position == "front":
                middle = name_pos + ctx_pos
            elif class_token_position == "middle":
                half = n_ctx // 2
                middle = ctx_pos[:half] + name_pos + ctx_pos[half:]
            else:
                middle = ctx_pos + name_pos
            order[i, 1 : 1 + n_ctx + n] = middle
        self.order = PromptBuffer(jnp.asarray(order, jnp.int32))
        token_ids = np.take_along_axis(ids, order, axis=1)
        _check_pooling(clip, token_ids, [len(r) - 1 for r in rows], eos, self.classnames)
        self.token_ids = PromptBuffer(jnp.asarray(token_ids))

    def _assemble(self, ctx: jax.Array) -> jax.Array:
        """Prompt embeddings ``(n_cls, L, dim)`` from context ``(n_ctx, dim)`` or per class."""
        prefix, suffix = self.token_prefix[...], self.token_suffix[...]
        if ctx.ndim == 2:
            ctx = jnp.broadcast_to(ctx[None], (self.n_cls, *ctx.shape))
        full = jnp.concatenate([prefix, ctx.astype(prefix.dtype), suffix], axis=1)
        if self.class_token_position == "end":
            return full
        return jnp.take_along_axis(full, self.order[...][..., None], axis=1)

    def with_classnames(self, classnames: Sequence[str], *, tokenize: Tokenize) -> _PromptBase:
        """The same learned prompts for other classes (base-to-new evaluation, CoCoOp Sec. 4.1).

        A class-specific context holds one context per class, so it only transfers to the same
        number of classes; otherwise ``ValueError`` names both counts.
        """
        new = self._rebuild(classnames, tokenize)
        learned = nnx.state(self, PromptParam)
        target = nnx.state(new, PromptParam)
        for (path, a), (_, b) in zip(
            jax.tree.leaves_with_path(learned), jax.tree.leaves_with_path(target)
        ):
            if a.shape != b.shape:
                raise ValueError(
                    f"class count mismatch: the learned prompt {jax.tree_util.keystr(path)} has "
                    f"shape {a.shape} for {self.n_cls} classes, {len(classnames)} classes need "
                    f"{b.shape}"
                )
        nnx.update(new, learned)
        return new

    def _rebuild(self, classnames: Sequence[str], tokenize: Tokenize) -> _PromptBase:
        raise NotImplementedError

    def _check_features(self, image_features: jax.Array) -> jax.Array:
        image_features = jnp.asarray(image_features)
        if image_features.ndim != 2:
            raise ValueError(
                f"image_features must be (batch, dim), got shape {image_features.shape}"
            )
        return image_features

    def __call__(self, pixels: ArrayLike) -> jax.Array:
        """Logits ``(batch, n_cls)`` for NHWC ``pixels`` (through the frozen image encoder)."""
        return self.logits_from_features(self.clip.encode_image(pixels))

    def logits_from_features(self, image_features: ArrayLike) -> jax.Array:
        raise NotImplementedError


class CoOp(_PromptBase):
    """Context Optimization (CoOp, Zhou et al. IJCV 2022): learned context vectors for CLIP.

    Args:
      clip: a frozen CLIP model (see module docstring).
      classnames: class names, in label order (``_`` is read as a space).
      tokenize: ``text -> ids`` *with* start and end tokens (e.g. ``CLIPTokenizer.encode``).
      n_ctx: number of context vectors ``M`` (default 16); with ``ctx_init`` it is the number of
        init tokens, and an explicit different value raises ``ValueError``.
      ctx_init: words to initialise the context from (e.g. ``"a photo of a"``); otherwise the
        context is drawn from N(0, 0.02^2).
      class_specific: one context per class (CSC) instead of a unified context.
      class_token_position: ``"end"``, ``"middle"`` or ``"front"`` (CoOp Sec. 3.2).
      class_suffix: text after the class name (the reference appends ``"."``).
    """

    def __init__(
        self,
        clip: Any,
        classnames: Sequence[str],
        *,
        tokenize: Tokenize,
        n_ctx: int | None = None,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: str = "end",
        class_suffix: str = ".",
        rngs: nnx.Rngs,
    ):
        super().__init__(
            clip, classnames, tokenize=tokenize, n_ctx=_default_n_ctx(n_ctx, ctx_init, 16),
            ctx_init=ctx_init, class_specific=class_specific,
            class_token_position=class_token_position, class_suffix=class_suffix, rngs=rngs,
        )  # fmt: skip

    def _rebuild(self, classnames: Sequence[str], tokenize: Tokenize) -> CoOp:
        n_ctx, ctx_init, class_specific, position, suffix = self._options
        return CoOp(
            self.clip, classnames, tokenize=tokenize, n_ctx=n_ctx, ctx_init=ctx_init,
            class_specific=class_specific, class_token_position=position, class_suffix=suffix,
            rngs=nnx.Rngs(0),
        )  # fmt: skip

    def prompts(self) -> jax.Array:
        """Prompt embeddings ``(n_cls, L, dim)`` fed to the text encoder (CoOp Eq. 2)."""
        return self._assemble(self.ctx[...])

    def text_features(self) -> jax.Array:
        """Unnormalised class text features ``(n_cls, projection_dim)``."""
        return self.clip.encode_text_embeddings(self.prompts(), self.token_ids[...])

    def logits_from_features(self, image_features: ArrayLike) -> jax.Array:
        """CoOp Eq. 1 logits ``exp(logit_scale) cos(f, g(t_i))`` from image features ``f``."""
        img = _l2_normalize(self._check_features(image_features))
        txt = _l2_normalize(self.text_features())
        return jnp.exp(self.clip.logit_scale[...]) * img @ txt.T


class CoCoOp(_PromptBase):
    """Conditional Context Optimization (CoCoOp, Zhou et al. CVPR 2022).

    Unified context ``v_1..v_M`` (class token at the end) shifted per image by the meta-net output
    ``pi = h(x)``, ``h = Linear(d_vis, d_vis // 16) -> ReLU -> Linear(d_ctx)`` on the normalised
    image feature ``x`` (Eq. 4-5).

    Args:
      clip, classnames, tokenize, n_ctx, ctx_init, class_suffix: as in :class:`CoOp` (default
        ``n_ctx=4``; the paper uses ``ctx_init="a photo of a"``).
      meta_hidden: hidden width of the meta-net (default ``max(1, d_vis // 16)``).
      chunk_size: images whose text passes are vectorised together inside ``lax.map``; memory
        grows with it, not with the batch size.
      remat: rematerialise each chunk in the backward pass (``jax.checkpoint``).
    """

    def __init__(
        self,
        clip: Any,
        classnames: Sequence[str],
        *,
        tokenize: Tokenize,
        n_ctx: int | None = None,
        ctx_init: str | None = None,
        class_suffix: str = ".",
        meta_hidden: int | None = None,
        chunk_size: int = 8,
        remat: bool = True,
        rngs: nnx.Rngs,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(
            clip, classnames, tokenize=tokenize, n_ctx=_default_n_ctx(n_ctx, ctx_init, 4),
            ctx_init=ctx_init, class_specific=False, class_token_position="end",
            class_suffix=class_suffix, rngs=rngs,
        )  # fmt: skip
        d_vis = clip.config.projection_dim
        d_ctx = self.ctx[...].shape[-1]
        hidden = meta_hidden or max(1, d_vis // 16)
        self.chunk_size = chunk_size
        self.remat = remat
        # PyTorch nn.Linear's default init (U(+-1/sqrt(fan_in))), as in the reference meta-net.
        self.meta_w1 = PromptParam(_uniform(rngs, (d_vis, hidden), d_vis))
        self.meta_b1 = PromptParam(_uniform(rngs, (hidden,), d_vis))
        self.meta_w2 = PromptParam(_uniform(rngs, (hidden, d_ctx), hidden))
        self.meta_b2 = PromptParam(_uniform(rngs, (d_ctx,), hidden))

    def _rebuild(self, classnames: Sequence[str], tokenize: Tokenize) -> CoCoOp:
        n_ctx, ctx_init, _, _, suffix = self._options
        return CoCoOp(
            self.clip, classnames, tokenize=tokenize, n_ctx=n_ctx, ctx_init=ctx_init,
            class_suffix=suffix, meta_hidden=self.meta_w1[...].shape[1],
            chunk_size=self.chunk_size, remat=self.remat, rngs=nnx.Rngs(0),
        )  # fmt: skip

    def meta_net(self, x: jax.Array) -> jax.Array:
        """``pi = h(x)`` (CoCoOp Eq. 4) for normalised image features ``x`` ``(batch, d_vis)``."""
        h = jax.nn.relu(x @ self.meta_w1[...] + self.meta_b1[...])
        return h @ self.meta_w2[...] + self.meta_b2[...]

    def prompts(self, image_features: ArrayLike) -> jax.Array:
        """Per-image prompt embeddings ``(batch, n_cls, L, dim)`` (materialises all of them)."""
        x = _l2_normalize(self._check_features(image_features))
        ctx = self.ctx[...][None] + self.meta_net(x)[:, None]
        return jax.vmap(self._assemble)(ctx)

    def logits_from_features(self, image_features: ArrayLike) -> jax.Array:
        """CoCoOp Eq. 5 logits ``(batch, n_cls)``, text passes chunked over images."""
        x = _l2_normalize(self._check_features(image_features))
        ctx = self.ctx[...][None] + self.meta_net(x)[:, None]  # (batch, n_ctx, dim)
        graphdef, state = nnx.split(self.clip)
        ids = self.token_ids[...]
        scale = jnp.exp(self.clip.logit_scale[...])

        def one_image(args):
            ctx_i, x_i = args
            clip = nnx.merge(graphdef, state)
            txt = _l2_normalize(clip.encode_text_embeddings(self._assemble(ctx_i), ids))
            return scale * txt @ x_i

        if self.remat:
            one_image = jax.checkpoint(one_image)
        return jax.lax.map(one_image, (ctx, x), batch_size=self.chunk_size)


def _default_n_ctx(n_ctx: int | None, ctx_init: str | None, default: int) -> int | None:
    return default if n_ctx is None and not ctx_init else n_ctx


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rngs.params(), shape, minval=-bound, maxval=bound)


# --------------------------------------------------------------------------------------------
# Saving, loading and reading learned prompts
# --------------------------------------------------------------------------------------------

_PROMPTS_FORMAT = "jaxcomp.prompts/1"


def _prompt_tensors(learner: _PromptBase) -> dict[tuple, nnx.Variable]:
    """``{path: variable}`` of every :class:`PromptParam` of ``learner`` (its ``nnx.state``)."""
    if not isinstance(learner, _PromptBase):
        raise ValueError(f"learner must be a CoOp or CoCoOp module, got {type(learner).__name__}")
    return dict(nnx.to_flat_state(nnx.state(learner, PromptParam)))


def _prompt_metadata(learner: _PromptBase) -> dict[str, str]:
    return {
        "format": _PROMPTS_FORMAT,
        "learner": type(learner).__name__,
        "class_specific": str(bool(learner._options[2])),
        "class_token_position": learner.class_token_position,
        "classnames": json.dumps(list(learner.classnames)),
    }


def save_prompts(learner: _PromptBase, path: str | os.PathLike) -> None:
    """Write the learned prompts of a :class:`CoOp` / :class:`CoCoOp` learner to ``path``.

    Every :class:`PromptParam` is stored as a float32 tensor of a safetensors file, named by its
    attribute path (``ctx``; CoCoOp adds the meta-net ``meta_w1``, ``meta_b1``, ``meta_w2``,
    ``meta_b2``), with the learner kind, ``class_specific``, ``class_token_position`` and the class
    names as metadata. The frozen CLIP is not saved: a few kilobytes per learned prompt set.
    """
    from safetensors.numpy import save_file

    tensors = {
        ".".join(map(str, key)): np.ascontiguousarray(np.asarray(var.get_value(), np.float32))
        for key, var in _prompt_tensors(learner).items()
    }  # contiguous: safetensors.numpy writes a non-contiguous view's memory, not its values
    save_file(tensors, os.fspath(path), metadata=_prompt_metadata(learner))


def load_prompts(learner: _PromptBase, path: str | os.PathLike) -> _PromptBase:
    """Load prompts written by :func:`save_prompts` into ``learner`` (in place; returns it).

    The learner must be of the same kind (CoOp / CoCoOp), ``class_specific`` and
    ``class_token_position`` as the saved one, and hold tensors of the same names and shapes
    (``n_ctx``, the embedding width, CoCoOp's meta-net width, and for a class-specific context the
    class count). The class names may differ: a unified context transfers to other classes
    (base-to-new, as :meth:`CoOp.with_classnames`). A mismatch raises ``ValueError`` naming the
    file and the tensor or field; everything is checked before anything is assigned.
    """
    from safetensors import safe_open

    file = os.fspath(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no prompt file at {file!r}")
    try:
        with safe_open(file, framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"could not read safetensors file {file!r}: {e}") from None
    if metadata.get("format") != _PROMPTS_FORMAT:
        raise ValueError(
            f"{file!r} is not a save_prompts file (format {metadata.get('format')!r}, expected "
            f"{_PROMPTS_FORMAT!r})"
        )
    ours = _prompt_metadata(learner)
    for field in ("learner", "class_specific", "class_token_position"):
        if metadata.get(field) != ours[field]:
            raise ValueError(
                f"{file!r} holds prompts with {field}={metadata.get(field)!r}, the learner has "
                f"{field}={ours[field]!r}"
            )
    flat = _prompt_tensors(learner)
    variables = {".".join(map(str, k)): v for k, v in flat.items()}
    missing, unknown = sorted(set(variables) - set(saved)), sorted(set(saved) - set(variables))
    if missing or unknown:
        raise ValueError(f"{file!r}: missing tensors {missing}, unknown tensors {unknown}")
    staged = {}
    for key, var in flat.items():
        name = ".".join(map(str, key))
        value = saved[name]
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{file!r}: tensor {name!r} has dtype {value.dtype}, expected float")
        expected = tuple(var.get_value().shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{file!r}: tensor {name!r} has shape {tuple(value.shape)}, the learner expects "
                f"{expected}"
            )
        staged[key] = var.replace(jnp.asarray(value, var.get_value().dtype))
    nnx.update(learner, nnx.from_flat_state(staged))
    return learner


class PromptWords(NamedTuple):
    """Nearest vocabulary tokens of learned context vectors: ``ids`` and Euclidean
    ``distances``, both ``(..., n_ctx, topk)``, nearest first."""

    ids: np.ndarray
    distances: np.ndarray


def interpret_prompt(ctx: ArrayLike, token_embedding: ArrayLike, *, topk: int = 1) -> PromptWords:
    """The ``topk`` vocabulary tokens nearest to each learned context vector (CoOp Sec. 5,
    "Interpretability": the reference's ``interpret_prompt.py`` ranks the token embeddings by
    Euclidean distance to each context vector).

    Args:
      ctx: context vectors ``(..., dim)``, e.g. ``learner.ctx[...]`` (``(n_ctx, dim)``, or
        ``(n_cls, n_ctx, dim)`` class-specific).
      token_embedding: the text encoder's token-embedding table ``(vocab, dim)``, e.g.
        ``clip.text_model.token_embedding.embedding[...]``.
      topk: how many tokens per context vector.

    Returns :class:`PromptWords`; decode the ids with the tokenizer (``id_to_token``). Distances
    are recomputed exactly (``||c - e||``) for the returned tokens; the search itself uses
    ``|c|^2 - 2 c.e + |e|^2`` in float64, so memory is ``n_ctx x vocab``.
    """
    ctx = np.asarray(ctx, np.float64)
    table = np.asarray(token_embedding, np.float64)
    if table.ndim != 2 or ctx.ndim < 1 or ctx.shape[-1] != table.shape[1]:
        raise ValueError(
            f"ctx (..., dim) and token_embedding (vocab, dim) must share dim, got shapes "
            f"{ctx.shape} and {table.shape}"
        )
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= table.shape[0]:
        raise ValueError(f"topk must be an integer in [1, {table.shape[0]}], got {topk!r}")
    flat = ctx.reshape(-1, ctx.shape[-1])
    sq = (flat**2).sum(1)[:, None] - 2 * flat @ table.T + (table**2).sum(1)[None]
    cand = np.argpartition(sq, topk - 1, axis=1)[:, :topk]
    dist = np.linalg.norm(flat[:, None] - table[cand], axis=-1)
    order = np.lexsort((cand, dist), axis=1)  # by distance, ties by id
    ids = np.take_along_axis(cand, order, 1)
    dist = np.take_along_axis(dist, order, 1)
    shape = (*ctx.shape[:-1], topk)
    return PromptWords(ids.reshape(shape), dist.reshape(shape))


# --------------------------------------------------------------------------------------------
# Zero-shot baseline and the base-to-new protocol
# --------------------------------------------------------------------------------------------


def zero_shot_classifier(
    clip: Any, classnames: Sequence[str], templates: Sequence[str], *, tokenize: Tokenize
) -> jax.Array:
    """Zero-shot CLIP class weights ``(n_cls, projection_dim)``, L2-normalised.

    Each class's text feature is the normalised mean of the normalised features of
    ``template.format(classname)`` over ``templates`` (CLIP Sec. 3.1.4, prompt ensembling).
    Logits are ``exp(logit_scale) * normalize(image_features) @ weights.T``.
    """
    if not templates:
        raise ValueError("templates is empty")
    context_length = clip.config.context_length
    names = [name.replace("_", " ") for name in classnames]
    _, eos = _token_layout(tokenize)
    total = 0.0
    for template in templates:  # one text pass per template over all classes
        texts = [template.format(name) for name in names]
        rows = [list(tokenize(text)) for text in texts]
        for text, r in zip(texts, rows):
            if len(r) > context_length:
                raise ValueError(f"prompt {text!r} has {len(r)} tokens > {context_length}")
        ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        _check_pooling(clip, ids, [len(r) - 1 for r in rows], eos, texts)
        total = total + _l2_normalize(_encode_text_jit(clip, jnp.asarray(ids)))
    return _l2_normalize(total / len(templates))


@nnx.jit
def _encode_text_jit(clip: Any, ids: jax.Array) -> jax.Array:
    return clip.encode_text_embeddings(clip.embed_tokens(ids), ids)


def base_new_split(labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split classes into base and new (CoCoOp Sec. 4.1).

    The distinct labels are sorted; the first ``ceil(n / 2)`` are *base* (train and test), the
    rest *new* (test only). Returns ``(base, new)`` int arrays.
    """
    classes = np.unique(np.asarray(labels))
    if classes.size < 2:
        raise ValueError(f"base-to-new needs at least 2 classes, got {classes.tolist()}")
    m = math.ceil(classes.size / 2)
    return classes[:m], classes[m:]


def k_shot_indices(labels: ArrayLike, classes: ArrayLike, k: int, *, seed: int) -> np.ndarray:
    """Indices of ``k`` examples per class of ``classes`` (without replacement), sorted.

    The draw depends only on ``seed`` (the protocol's 3 seeds give 3 different few-shot sets).
    A class with fewer than ``k`` examples raises ``ValueError`` naming it.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.asarray(classes).tolist():
        idx = np.flatnonzero(labels == c)
        if idx.size < k:
            raise ValueError(f"class {c} has {idx.size} examples, fewer than k={k}")
        out.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out))


def harmonic_mean(base_acc: float, new_acc: float) -> float:
    """``H = 2 B N / (B + N)`` of base and new accuracy (CoCoOp Sec. 4.1); 0 when both are 0."""
    for name, v in (("base_acc", base_acc), ("new_acc", new_acc)):
        if not 0 <= v <= 100:
            raise ValueError(f"{name} must be in [0, 100], got {v}")
    if base_acc + new_acc == 0:
        return 0.0
    return 2 * base_acc * new_acc / (base_acc + new_acc)


# --------------------------------------------------------------------------------------------
# Linear-probe CLIP baseline (CoOp Sec. 4.1; the reference's lpclip/linear_probe.py)
# --------------------------------------------------------------------------------------------


def _labels(labels: ArrayLike, n: int, n_classes: int, name: str) -> jax.Array:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be {n} integer labels, got shape {labels.shape}")
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise ValueError(f"{name} must be in [0, {n_classes}), got {int(bad[0])}")
    return jnp.asarray(labels, jnp.int32)


@jax.jit(static_argnames=("n_classes", "max_iter"))
def _fit_lr(x, y, c, tol, *, n_classes: int, max_iter: int):
    n, d = x.shape
    onehot = jax.nn.one_hot(y, n_classes, dtype=x.dtype)

    def objective(p):  # sklearn's  0.5 |W|^2 + C sum_i CE_i, divided by C n (same minimiser)
        w, b = p
        ce = optax.softmax_cross_entropy(x @ w + b, onehot).mean()
        return ce + 0.5 * jnp.sum(w**2) / (c * n)

    params = (jnp.zeros((d, n_classes), x.dtype), jnp.zeros((n_classes,), x.dtype))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        p, state, _, i = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(p, updates), state, optax.tree.norm(grad), i + 1

    def keep_going(carry):
        return (carry[2] > tol) & (carry[3] < max_iter)

    init = (params, solver.init(params), jnp.asarray(jnp.inf, x.dtype), 0)
    params, _, gnorm, iters = jax.lax.while_loop(keep_going, step, init)
    return params, gnorm, iters


def fit_logistic_regression(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    c: float,
    n_classes: int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """L2-regularised multinomial logistic regression, solved with L-BFGS (``optax.lbfgs``).

    Minimises scikit-learn's ``LogisticRegression(penalty="l2", C=c)`` objective
    ``0.5 |W|^2 + c * sum_i CE(x_i W + b, y_i)`` (bias not penalised), the classifier of CoOp's
    linear-probe baseline, scaled by ``1 / (c n)`` for conditioning; stops when the scaled
    gradient norm is below ``tol`` or after ``max_iter`` iterations. Returns ``(W (dim, n_classes),
    b (n_classes,))``; predict with ``argmax(x @ W + b)``. ``n_classes`` defaults to
    ``max(labels) + 1``.
    """
    x = jnp.asarray(features, jnp.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be (n, dim) with n >= 1, got shape {x.shape}")
    if not (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0):
        raise ValueError(f"c must be a finite number > 0, got {c!r}")
    if n_classes is None:
        n_classes = int(np.max(np.asarray(labels))) + 1 if np.size(labels) else 0
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    y = _labels(labels, x.shape[0], n_classes, "labels")
    (w, b), _, _ = _fit_lr(x, y, float(c), float(tol), n_classes=n_classes, max_iter=max_iter)
    return w, b


class LinearProbe(NamedTuple):
    """Result of :func:`linear_probe`: the classifier ``(weights, bias)`` fitted with the chosen
    ``c``, its validation accuracy (in [0, 1]) and every ``(c, val_accuracy)`` tried, in order."""

    weights: jax.Array
    bias: jax.Array
    c: float
    val_accuracy: float
    history: tuple[tuple[float, float], ...]

    def predict(self, features: ArrayLike) -> jax.Array:
        """Class predictions ``argmax(x W + b)`` for ``features`` ``(n, dim)``."""
        return jnp.argmax(jnp.asarray(features, jnp.float32) @ self.weights + self.bias, axis=-1)


LINEAR_PROBE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def linear_probe(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    val_features: ArrayLike,
    val_labels: ArrayLike,
    *,
    grid: Sequence[float] = LINEAR_PROBE_GRID,
    steps: int = 8,
    max_iter: int = 1000,
) -> LinearProbe:
    """The linear-probe CLIP baseline of CoOp (Sec. 4.1; Radford et al. 2021, Sec. 3.2): logistic
    regression on frozen image features, its inverse regularisation ``C`` chosen on a validation
    split.

    As the reference (``lpclip/linear_probe.py``): every ``C`` of ``grid`` is fitted
    (:func:`fit_logistic_regression`) and scored by validation accuracy; from the best, ``C_peak``,
    the range ``[C_peak / 10, 10 C_peak]`` is searched for ``steps`` rounds: both ends are fitted,
    the better one (the left on a tie) is kept, and the range shrinks to that end and the
    log-space midpoint. The classifier of the last round is returned. ``n_classes`` is
    ``max(train_labels) + 1``; validation labels must lie in that range.
    """
    train_x = np.asarray(train_features, np.float32)
    val_x = np.asarray(val_features, np.float32)
    if val_x.ndim != 2 or train_x.ndim != 2 or val_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"train and validation features must be (n, dim) with one dim, got shapes "
            f"{train_x.shape} and {val_x.shape}"
        )
    if not grid or any(not (isinstance(c, (int, float)) and c > 0) for c in grid):
        raise ValueError(f"grid must be a non-empty sequence of numbers > 0, got {grid!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    n_classes = int(np.max(np.asarray(train_labels))) + 1 if np.size(train_labels) else 0
    val_y = _labels(val_labels, val_x.shape[0], max(n_classes, 1), "val_labels")
    history: list[tuple[float, float]] = []

    def fit(c: float):
        w, b = fit_logistic_regression(
            train_x, train_labels, c=c, n_classes=n_classes, max_iter=max_iter
        )
        acc = float(jnp.mean(jnp.argmax(val_x @ w + b, axis=-1) == val_y))
        history.append((float(c), acc))
        return w, b, acc

    accs = [fit(c)[2] for c in grid]
    peak = float(grid[int(np.argmax(accs))])
    lo, hi = math.log10(peak) - 1, math.log10(peak) + 1  # log10 of the range's ends
    for _ in range(steps):
        w_lo, b_lo, acc_lo = fit(10.0**lo)
        w_hi, b_hi, acc_hi = fit(10.0**hi)
        mid = 0.5 * (lo + hi)
        if acc_lo < acc_hi:
            w, b, c, acc = w_hi, b_hi, 10.0**hi, acc_hi
            lo = mid
        else:
            w, b, c, acc = w_lo, b_lo, 10.0**lo, acc_lo
            hi = mid
    return LinearProbe(w, b, float(c), acc, tuple(history))

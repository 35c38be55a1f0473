"""Save and load a trained prover: parameters as safetensors, vocabularies, templates and prover
options as JSON (no pickle), so a model trained by ``experiments/gntp.py`` can be reloaded to score,
explain or decode rules.

A saved prover is a directory (local or ``gs://``)::

    params.safetensors   predicates, constants, tokens, rules.<t>, slope (float32) and the KB
                         arrays kb.facts, kb.mentions, kb.mention_tokens, kb.mention_mask
    prover.json          format, predicates, constants, tokens, templates (clause text), config
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxcomp.prover.gntp import ProverConfig
from jaxcomp.prover.kb import KnowledgeBase
from jaxcomp.prover.templates import Template, format_template, parse_templates

__all__ = ["save_prover", "load_prover", "PROVER_FORMAT"]

PROVER_FORMAT = "jaxcomp.prover/1"
_KB_ARRAYS = {"facts": np.int32, "mentions": np.int32, "mention_tokens": np.int32,
              "mention_mask": np.float32}  # fmt: skip


def save_prover(
    path: str | epath.PathLike,
    params: dict,
    kb: KnowledgeBase,
    templates: Sequence[Template],
    config: ProverConfig | None = None,
) -> epath.Path:
    """Write ``params`` (the :func:`~jaxcomp.prover.kb.init_params` pytree), the KB (symbols,
    facts, mentions), the templates and ``config`` (default ``ProverConfig()``) to the
    directory ``path``; returns it."""
    from safetensors.numpy import save

    config = ProverConfig() if config is None else config
    templates = tuple(templates)
    if len(params["rules"]) != len(templates):
        raise ValueError(
            f"params has {len(params['rules'])} rule tensors, templates has {len(templates)}"
        )
    tensors = {k: params[k] for k in ("predicates", "constants", "tokens", "slope")}
    tensors |= {f"rules.{t}": r for t, r in enumerate(params["rules"])}
    # np.array(order="C"), not ascontiguousarray, which turns the 0-d slope into shape (1,)
    tensors = {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}
    for name, dtype in _KB_ARRAYS.items():
        tensors[f"kb.{name}"] = np.array(getattr(kb, name), dtype, order="C")
    meta = {
        "format": PROVER_FORMAT,
        "predicates": list(kb.predicates),
        "constants": list(kb.constants),
        "tokens": list(kb.tokens),
        "templates": [format_template(t, "clauses") for t in templates],
        "config": dataclasses.asdict(config),
    }
    out = epath.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.safetensors").write_bytes(save(tensors, metadata={"format": PROVER_FORMAT}))
    (out / "prover.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return out


def load_prover(
    path: str | epath.PathLike,
) -> tuple[dict, KnowledgeBase, tuple[Template, ...], ProverConfig]:
    """Read a directory written by :func:`save_prover` -> ``(params, kb, templates, config)``.

    Scores of the loaded prover equal those of the saved one exactly (float32 round trip). A
    missing file, another format or a tensor whose shape disagrees with the vocabularies raises
    (``FileNotFoundError`` / ``ValueError`` naming the file and the tensor).
    """
    from safetensors.numpy import load

    d = epath.Path(path)
    for name in ("prover.json", "params.safetensors"):
        if not (d / name).exists():
            raise FileNotFoundError(f"no saved prover at {str(d)!r}: {name} is missing")
    meta = json.loads((d / "prover.json").read_text())
    if meta.get("format") != PROVER_FORMAT:
        raise ValueError(
            f"{d / 'prover.json'}: format {meta.get('format')!r}, expected {PROVER_FORMAT!r}"
        )
    try:
        t = load((d / "params.safetensors").read_bytes())
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"could not read {d / 'params.safetensors'}: {e}") from None
    templates = tuple(parse_templates("\n".join(meta["templates"]), "clauses"))
    dim = t["predicates"].shape[-1] if "predicates" in t else None
    want = {
        "predicates": (len(meta["predicates"]), dim),
        "constants": (len(meta["constants"]), dim),
        "tokens": (max(len(meta["tokens"]), 1), dim),
        "slope": (),
    }
    config = ProverConfig(**meta["config"])
    # GNTP-Attention stores attention logits over the predicates in place of rule embeddings
    last = len(meta["predicates"]) if config.rule_attention else dim
    want |= {f"rules.{i}": (tp.count, len(tp.predicates), last) for i, tp in enumerate(templates)}
    for name, shape in want.items():
        if name not in t:
            raise ValueError(f"{d / 'params.safetensors'}: tensor {name!r} is missing")
        if t[name].shape != shape:
            raise ValueError(
                f"{d / 'params.safetensors'}: tensor {name!r} has shape {t[name].shape}, the "
                f"vocabularies and templates in prover.json need {shape}"
            )
    params = {k: jnp.asarray(t[k]) for k in ("predicates", "constants", "tokens", "slope")}
    params["rules"] = [jnp.asarray(t[f"rules.{i}"]) for i in range(len(templates))]
    kb = KnowledgeBase(
        predicates=tuple(meta["predicates"]),
        constants=tuple(meta["constants"]),
        tokens=tuple(meta["tokens"]),
        **{name: np.asarray(t[f"kb.{name}"], dtype) for name, dtype in _KB_ARRAYS.items()},
    )
    return params, kb, templates, config

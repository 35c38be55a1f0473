"""Generic helpers for importing pretrained weights from safetensors checkpoints.

These functions know nothing about any particular architecture: they read a safetensors file into a
flat ``{key: np.ndarray}`` dict (Hugging Face key names, e.g. ``encoder.layer.0.attention.self.query
.weight``), read a ``config.json``, and validate a checkpoint against the keys and shapes a model
expects. Every error names the offending file, key or shape. Architecture loaders
(:mod:`jaxcomp.models.bert`, the CLIP loader) map the validated arrays into their Flax NNX modules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "check_keys",
    "check_shape",
    "load_safetensors",
    "read_json",
    "resolve_file",
    "validate_checkpoint",
]


def resolve_file(path: str | os.PathLike, filename: str) -> str:
    """Returns ``path`` if it is a file, else ``path/filename``; raises if that file is missing.

    Raises:
      FileNotFoundError: naming the missing path.
    """
    path = os.fspath(path)
    candidate = path if os.path.isfile(path) else os.path.join(path, filename)
    if not os.path.isfile(candidate):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
        raise FileNotFoundError(f"{filename!r} not found in checkpoint directory {path!r}")
    return candidate


def read_json(path: str | os.PathLike, filename: str = "config.json") -> dict:
    """Reads ``path/filename`` (or ``path`` itself if it is a file) as JSON."""
    file = resolve_file(path, filename)
    with open(file, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file!r} is not valid JSON: {e}") from e


def load_safetensors(path: str | os.PathLike, filename: str = "model.safetensors") -> dict:
    """Reads a safetensors file into a flat ``{key: np.ndarray}`` dict (no pickle, no torch).

    Args:
      path: the ``.safetensors`` file, or a checkpoint directory containing ``filename``.
      filename: file name looked up when ``path`` is a directory.

    Raises:
      FileNotFoundError: if the file does not exist (naming it).
      ValueError: if the file is not a readable safetensors file.
    """
    from safetensors.numpy import load_file

    file = resolve_file(path, filename)
    try:
        return dict(load_file(file))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"could not read safetensors file {file!r}: {e}") from e


def check_shape(key: str, array: np.ndarray, expected: Sequence[int]) -> None:
    """Raises ``ValueError`` naming ``key`` if ``array.shape != expected``."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"checkpoint tensor {key!r} has shape {tuple(array.shape)}, "
            f"the model expects {tuple(expected)}"
        )


def check_keys(
    present: Iterable[str], expected: Iterable[str], *, ignore: Sequence[str] = ()
) -> None:
    """Checks that the checkpoint keys equal the expected keys, up to ignored patterns.

    Args:
      present: keys found in the checkpoint.
      expected: keys the model needs.
      ignore: regular expressions (``re.search``) for checkpoint keys that may be present and are
        skipped (buffers such as ``position_ids``, task heads the model does not have).

    Raises:
      ValueError: naming the first missing keys and the first unknown keys.
    """
    present, expected = set(present), set(expected)
    unknown = sorted(k for k in present - expected if not any(re.search(p, k) for p in ignore))
    missing = sorted(expected - present)
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if unknown:
        problems.append(f"unknown key(s) {unknown[:5]}" + (" ..." if len(unknown) > 5 else ""))
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems))


def validate_checkpoint(
    tensors: Mapping[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]],
    *,
    ignore: Sequence[str] = (),
) -> dict:
    """Validates keys and shapes of a flat checkpoint dict; returns the expected subset.

    Args:
      tensors: flat checkpoint, e.g. from :func:`load_safetensors`.
      shapes: ``{key: shape}`` the model expects, in the checkpoint's own layout.
      ignore: regexes for checkpoint keys to skip (see :func:`check_keys`).

    Returns:
      ``{key: tensors[key]}`` for every key of ``shapes``.
    """
    check_keys(tensors.keys(), shapes.keys(), ignore=ignore)
    for key, shape in shapes.items():
        check_shape(key, tensors[key], shape)
    return {key: tensors[key] for key in shapes}

"""Generic helpers for importing pretrained weights from safetensors checkpoints.

These functions know nothing about any particular architecture: they read a safetensors file into a
flat ``{key: np.ndarray}`` dict (Hugging Face key names, e.g. ``encoder.layer.0.attention.self.query
.weight``), read a ``config.json``, and validate a checkpoint against the keys and shapes a model
expects. Every error names the offending file, key or shape. Architecture loaders
(:mod:`jaxcomp.models.bert`, the CLIP loader) map the validated arrays into their Flax NNX modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_config_fields",
    "check_float",
    "check_keys",
    "check_shape",
    "load_safetensors",
    "load_tokenizer_file",
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
    with open(file, "rb") as f:
        data = f.read()
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{file!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file!r} must hold a JSON object, got {type(value).__name__}")
    return value


def load_tokenizer_file(file: str | os.PathLike) -> Any:
    """A ``tokenizers.Tokenizer`` from ``file``; ``ValueError`` naming the file if it is corrupt.

    ``tokenizers`` raises a bare ``Exception`` for a malformed file; this wraps it.
    """
    from tokenizers import Tokenizer

    file = os.fspath(file)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no tokenizer file at {file!r}")
    try:
        return Tokenizer.from_file(file)
    except Exception as e:  # tokenizers raises plain Exception
        raise ValueError(f"could not read tokenizer file {file!r}: {e}") from None


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
        raise ValueError(f"could not read safetensors file {file!r}: {e}") from None


def check_float(key: str, array: Any, source: str | None = None) -> None:
    """Raises ``ValueError`` naming ``key`` (and ``source``) unless ``array`` has a float dtype.

    Weights stored as integers or booleans are a broken export (or a mask saved under a weight's
    name); casting them would load a model that runs and is silently wrong.
    """
    dtype = np.asarray(array).dtype if not hasattr(array, "dtype") else np.dtype(array.dtype)
    if not np.issubdtype(dtype, np.floating):
        where = f" in {source!r}" if source else ""
        raise ValueError(
            f"checkpoint tensor {key!r}{where} has dtype {dtype}, expected a floating-point dtype"
        )


def check_config_fields(config: Any, *, non_negative: Sequence[str] = (),
                        optional: Sequence[str] = ()) -> None:  # fmt: skip
    """Type checks for the fields of a config dataclass, naming the field and the value.

    Fields annotated ``int`` must be integers (not bools) ``>= 1`` (``>= 0`` for the names in
    ``non_negative``); ``float`` fields finite real numbers; ``str`` fields strings; ``bool``
    fields bools. Names in ``optional`` may also be ``None``. A ``config.json`` with
    ``"hidden_size": "24"`` is rejected here instead of failing later inside a format string.
    """
    name = type(config).__name__
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), str(field.type)
        if value is None and field.name in optional:
            continue
        if kind == "int":
            low = 0 if field.name in non_negative else 1
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            ok = ok and value >= low
            need = f"an integer >= {low}"
        elif kind == "float":
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, bool
            )
            ok = ok and math.isfinite(float(value))
            need = "a finite number"
        elif kind == "str":
            ok, need = isinstance(value, str), "a string"
        elif kind == "bool":
            ok, need = isinstance(value, (bool, np.bool_)), "a bool"
        else:
            continue
        if not ok:
            raise ValueError(
                f"{name} field {field.name!r} must be {need}, got {value!r} "
                f"({type(value).__name__})"
            )


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
    source: str | None = None,
) -> dict:
    """Validates keys, shapes and float dtypes of a flat checkpoint; returns the expected subset.

    Args:
      tensors: flat checkpoint, e.g. from :func:`load_safetensors`.
      shapes: ``{key: shape}`` the model expects, in the checkpoint's own layout.
      ignore: regexes for checkpoint keys to skip (see :func:`check_keys`).
      source: the file the tensors came from, named in the errors.

    Returns:
      ``{key: tensors[key]}`` for every key of ``shapes``.
    """
    try:
        check_keys(tensors.keys(), shapes.keys(), ignore=ignore)
        for key, shape in shapes.items():
            check_shape(key, tensors[key], shape)
            check_float(key, tensors[key])
    except ValueError as e:
        if source is None:
            raise
        raise ValueError(f"{source!r}: {e}") from None
    return {key: tensors[key] for key in shapes}

"""LoSparse: low-rank plus sparse approximation of linear layers (Li et al., ICML 2023).

Each weight matrix is written as ``W = A B + S`` (paper §3; kernel layout ``(in, out)``): a
low-rank part ``A B`` of rank ``r`` initialised from the top-``r`` singular vectors of ``W`` (§3,
SVD initialisation), and a sparse residual ``S = W - A B`` that is pruned *structurally* (whole
output neurons, i.e. columns of the kernel) during training with the sensitivity-based importance
of PLATON (Zhang et al., 2022), smoothed by an exponential moving average and optionally an
uncertainty term (§3), under a cubic sparsity schedule (§3, Algorithm 1).

Pieces:

* :class:`LoSparseLinear` — ``y = x @ (A @ B + S) + b``; ``A``, ``B``, ``S`` are their own
  ``nnx.Param`` subtypes (:class:`LoSparseA`, :class:`LoSparseB`, :class:`LoSparseS`), so
  ``nnx.split(model, LoSparseS, ...)`` or ``wrt=`` filters select them.
* :func:`decompose`, :func:`rank_for_ratio`, :func:`convert` — SVD initialisation and in-place
  replacement of the dense layers of an encoder.
* :func:`losparse_pruning` — the optax transform that trains and prunes ``S``.
* :func:`export`, :func:`parameter_report` — the deployable form that stores only the kept columns
  of ``S``, and its real parameter count and bytes.
* :func:`save_compressed`, :func:`load_compressed` — that form in one safetensors file (``A``,
  ``B``, kept ``S`` columns, their indices, biases and every other weight), and the loader that
  rebuilds the exported layers from the stored shapes.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

__all__ = [
    "ConvertReport",
    "LoSparseA",
    "LoSparseB",
    "LoSparseExported",
    "LoSparseLinear",
    "LoSparseS",
    "LoSparseState",
    "convert",
    "decompose",
    "default_select",
    "export",
    "load_compressed",
    "losparse_pruning",
    "neuron_scores",
    "parameter_report",
    "rank_for_ratio",
    "save_compressed",
    "sparse_leaves",
    "sparsity_for_budget",
]


class LoSparseA(nnx.Param):
    """Left low-rank factor ``A`` of shape ``(in, r)``."""


class LoSparseB(nnx.Param):
    """Right low-rank factor ``B`` of shape ``(r, out)``."""


class LoSparseS(nnx.Param):
    """Sparse residual ``S`` of shape ``(in, out)``, pruned by output neuron (column)."""


# --------------------------------------------------------------------------------------------
# Decomposition.


def rank_for_ratio(shape: Sequence[int], ratio: float) -> int:
    """Rank whose factors hold ``ratio`` of the parameters: ``ceil(ratio * in * out / (in + out))``.

    This is the reference code's ``parameter_ratio`` rule (``r (in + out) ~= ratio * in * out``).
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be (in, out), got {tuple(shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    n_in, n_out = int(shape[0]), int(shape[1])
    return min(math.ceil(ratio * n_in * n_out / (n_in + n_out)), min(n_in, n_out))


def decompose(kernel: ArrayLike, rank: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SVD initialisation (paper §3): ``A = U_r sqrt(s_r)``, ``B = sqrt(s_r) V_r^T``,
    ``S = W - A B``, so ``A @ B + S == W`` and the converted layer equals the dense one.

    Args:
      kernel: ``(in, out)`` weight ``W``.
      rank: ``r`` in ``[0, min(in, out)]``.

    Returns:
      ``(A, B, S)`` in the kernel's dtype (the SVD runs in float64 with NumPy, eagerly).
    """
    w = np.asarray(kernel)
    if w.ndim != 2:
        raise ValueError(f"kernel must be 2-D (in, out), got shape {w.shape}")
    if not 0 <= rank <= min(w.shape):
        raise ValueError(f"rank must be in [0, {min(w.shape)}] for kernel {w.shape}, got {rank}")
    wf = w.astype(np.float64)  # one-off initialisation: exact SVD on the host
    u, s, vt = np.linalg.svd(wf, full_matrices=False)
    root = np.sqrt(s[:rank])
    a = u[:, :rank] * root[None, :]
    b = root[:, None] * vt[:rank, :]
    sparse = wf - a @ b
    dtype = jnp.asarray(kernel).dtype
    return jnp.asarray(a, dtype), jnp.asarray(b, dtype), jnp.asarray(sparse, dtype)


class LoSparseLinear(nnx.Module):
    """``y = x @ (A @ B + S) + b`` (paper §3), kernel layout ``(in, out)``.

    Args:
      in_features, out_features: kernel shape.
      rank: low-rank ``r`` (``0`` gives a sparse-only layer).
      use_bias: keep a bias ``b``.
      sparse: keep the sparse residual ``S`` (``False`` gives a low-rank-only layer).
      in_shape, out_shape: for a layer replacing an ``nnx.LinearGeneral`` / ``nnx.Einsum`` (see
        :func:`convert`): the trailing input axes ``in_shape`` are flattened to ``in_features``
        and the output is reshaped to ``out_shape``; ``None``: plain ``(..., in) -> (..., out)``.
      rngs: initialisation keys (``A`` LeCun-normal, ``B`` zero, ``S`` LeCun-normal); use
        :meth:`from_kernel` to initialise from a pretrained dense kernel instead.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        use_bias: bool = True,
        sparse: bool = True,
        dtype: Any = jnp.float32,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        if not 0 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [0, {min(in_features, out_features)}], got {rank}")
        self.in_shape, self.out_shape = _check_shapes(
            in_features, out_features, in_shape, out_shape
        )
        init = jax.nn.initializers.lecun_normal()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        a_std = 1.0 / math.sqrt(in_features)  # LeCun normal; also valid for rank 0
        self.A = LoSparseA(a_std * jax.random.normal(rngs.params(), (in_features, rank), dtype))
        self.B = LoSparseB(jnp.zeros((rank, out_features), dtype))
        self.S = (
            LoSparseS(init(rngs.params(), (in_features, out_features), dtype)) if sparse else None
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype)) if use_bias else None

    @classmethod
    def from_kernel(
        cls,
        kernel: ArrayLike,
        bias: ArrayLike | None,
        rank: int,
        *,
        sparse: bool = True,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
    ) -> LoSparseLinear:
        """A layer equal to ``x @ kernel + bias``: SVD-initialised factors (see :func:`decompose`).

        With ``sparse=False`` the residual is dropped (the best rank-``r`` approximation).
        ``kernel`` is 2-D; ``in_shape`` / ``out_shape`` as in the constructor.
        """
        kernel = jnp.asarray(kernel)
        layer = cls(
            kernel.shape[0],
            kernel.shape[1],
            rank,
            use_bias=bias is not None,
            sparse=sparse,
            dtype=kernel.dtype,
            in_shape=in_shape,
            out_shape=out_shape,
            rngs=nnx.Rngs(0),
        )
        a, b, s = decompose(kernel, rank)
        layer.A.set_value(a)
        layer.B.set_value(b)
        if sparse:
            layer.S.set_value(s)
        if bias is not None:
            layer.bias.set_value(jnp.asarray(bias))
        return layer

    def kernel(self) -> jax.Array:
        """The effective dense kernel ``A @ B + S``."""
        w = self.A[...] @ self.B[...]
        return w if self.S is None else w + self.S[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        x, lead = _flatten_in(x, self.in_shape)
        y = x @ self.kernel()
        y = y if self.bias is None else y + self.bias[...]
        return _unflatten_out(y, lead, self.out_shape)


def _check_shapes(n_in, n_out, in_shape, out_shape):
    in_shape = None if in_shape is None else tuple(int(d) for d in in_shape)
    out_shape = None if out_shape is None else tuple(int(d) for d in out_shape)
    if in_shape is not None and math.prod(in_shape) != n_in:
        raise ValueError(f"in_shape {in_shape} does not hold in_features={n_in}")
    if out_shape is not None and math.prod(out_shape) != n_out:
        raise ValueError(f"out_shape {out_shape} does not hold out_features={n_out}")
    return in_shape, out_shape


def _flatten_in(x: jax.Array, in_shape: tuple | None) -> tuple[jax.Array, tuple]:
    """``(..., *in_shape) -> (..., prod(in_shape))``; returns the leading shape too."""
    if in_shape is None:
        return x, x.shape[:-1]
    lead = x.shape[: x.ndim - len(in_shape)]
    if tuple(x.shape[len(lead) :]) != in_shape:
        raise ValueError(f"input's trailing axes must be {in_shape}, got shape {x.shape}")
    return x.reshape(*lead, math.prod(in_shape)), lead


def _unflatten_out(y: jax.Array, lead: tuple, out_shape: tuple | None) -> jax.Array:
    return y if out_shape is None else y.reshape(*lead, *out_shape)


def sparsity_for_budget(
    shapes: Sequence[Sequence[int]], keep_fraction: float, rank_ratio: float
) -> float:
    """Final sparsity of ``S`` that puts a LoSparse model at ``keep_fraction`` of the dense
    parameters of the matrices ``shapes`` (paper §4: comparisons at equal parameter budget).

    The low-rank factors of :func:`convert` hold ``sum_i r_i (in_i + out_i)`` parameters
    (``r_i = rank_for_ratio(shape_i, rank_ratio)``, rounded up per matrix); ``S`` keeps the rest
    of the budget: ``1 - (keep_fraction * N - lowrank) / N`` with ``N = sum_i in_i out_i``.
    The baselines at the same budget: low-rank only is ``convert(..., keep_fraction,
    sparse=False)``; structured sparse only is ``convert(..., 0.0)`` (rank 0, ``S = W``) pruned by
    :func:`losparse_pruning` to ``1 - keep_fraction``; magnitude / movement pruning
    (:func:`jaxcomp.optim.gmp`, :func:`jaxcomp.optim.movement_pruning`) use sparsity
    ``1 - keep_fraction`` (values only: an unstructured format also stores indices).

    Raises:
      ValueError: ``keep_fraction`` not in ``(0, 1]``, or a budget the low-rank part alone
        exceeds (naming both counts).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    total = sum(int(a) * int(b) for a, b in shapes)
    lowrank = sum(rank_for_ratio(sh, rank_ratio) * (int(sh[0]) + int(sh[1])) for sh in shapes)
    keep_s = keep_fraction * total - lowrank
    if keep_s < 0:
        raise ValueError(
            f"the low-rank factors at rank_ratio={rank_ratio} hold {lowrank} parameters, more than"
            f" the budget {keep_fraction} * {total} = {keep_fraction * total:g}"
        )
    return 1.0 - keep_s / total


# --------------------------------------------------------------------------------------------
# Conversion of a model.

_BLOCKED = ("embeddings", "embedding", "pooler", "classifier", "cls", "head", "lm_head")


_LINEAR_TYPES = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum)


def default_select(path: tuple, module: nnx.Module) -> bool:
    """Every ``nnx.Linear``, ``nnx.LinearGeneral`` and ``nnx.Einsum`` except those under
    embeddings, pooler, classifier or heads.

    This is the reference code's block list (``pooler``, ``classifier``, ``LayerNorm``,
    ``embeddings``): for BERT it selects attention Q/K/V/output and the two FFN dense layers.
    """
    return isinstance(module, _LINEAR_TYPES) and not any(str(p) in _BLOCKED for p in path)


def _set_child(parent: Any, key: Any, value: Any) -> None:
    if isinstance(parent, (list, nnx.List)) or isinstance(key, int):
        parent[key] = value
    else:
        setattr(parent, key, value)


def _einsum_layout(module: nnx.Einsum) -> tuple[tuple, tuple] | str:
    """``(in_shape, out_shape)`` of an Einsum that is a matrix product over trailing axes
    (``"...d,dnh->...nh"``, ``"bsd,dnh->bsnh"``), else the reason it is not."""
    eq = module.einsum_str.replace(" ", "")
    if "->" not in eq or eq.count(",") != 1:
        return f"einsum {eq!r} is not 'x,kernel->y'"
    lhs, out = eq.split("->")
    xs, ks = lhs.split(",")
    kshape = tuple(module.kernel.get_value().shape)
    if "." in ks or len(ks) != len(kshape) or len(set(ks)) != len(ks):
        return f"einsum {eq!r}: kernel subscripts {ks!r} do not match its shape {kshape}"
    n_in = sum(c in xs for c in ks)  # must be the kernel's leading and the input's trailing axes
    prefix, k_out = xs[: len(xs) - n_in], ks[n_in:]
    if n_in == 0 or not xs.endswith(ks[:n_in]) or out != prefix + k_out:
        return f"einsum {eq!r} is not a product over the input's trailing axes"
    in_shape, out_shape = kshape[:n_in], kshape[n_in:]
    if module.bias is not None and tuple(module.bias.get_value().shape) != out_shape:
        return f"einsum {eq!r}: bias shape {module.bias.get_value().shape} is not {out_shape}"
    return in_shape, out_shape


def _as_matrix(module: nnx.Module) -> tuple[jax.Array, Any, tuple | None, tuple | None] | str:
    """``(kernel (in, out), bias (out,) or None, in_shape, out_shape)`` of a linear layer, or the
    reason it cannot be written as one matrix."""
    if isinstance(module, nnx.Linear):
        bias = None if module.bias is None else module.bias[...]
        return module.kernel[...], bias, None, None
    if isinstance(module, nnx.LinearGeneral):
        if module.batch_axis:
            return f"LinearGeneral with batch_axis {dict(module.batch_axis)} is not one matrix"
        axis = tuple(module.axis)
        if axis != tuple(range(-len(axis), 0)):
            return f"LinearGeneral contracts axis {axis}, not the trailing axes"
        in_shape, out_shape = tuple(module.in_features), tuple(module.out_features)
    elif isinstance(module, nnx.Einsum):
        layout = _einsum_layout(module)
        if isinstance(layout, str):
            return layout
        in_shape, out_shape = layout
    else:
        return f"{type(module).__name__} is not a linear layer"
    kernel = module.kernel[...].reshape(math.prod(in_shape), math.prod(out_shape))
    bias = None if module.bias is None else module.bias[...].reshape(-1)
    return kernel, bias, in_shape, out_shape


class ConvertReport(NamedTuple):
    """What :func:`convert` did: ``converted`` paths (``"layers/0/query"``), and ``skipped``:
    ``{path: reason}`` for every linear-type layer (``nnx.Linear``, ``nnx.LinearGeneral``,
    ``nnx.Einsum``, ``nnx.Conv``) left dense, because ``select`` did not pick it or it has no
    2-D matrix form."""

    converted: list[str]
    skipped: dict[str, str]


def convert(
    model: nnx.Module,
    rank_ratio: float,
    select: Callable[[tuple, nnx.Module], bool] = default_select,
    *,
    sparse: bool = True,
    report: bool = False,
) -> nnx.Module | tuple[nnx.Module, ConvertReport]:
    """Replaces selected linear layers by SVD-initialised :class:`LoSparseLinear` (§3).

    ``nnx.Linear`` kernels are used as they are; an ``nnx.LinearGeneral`` over the trailing
    input axes (no ``batch_axis``) and an ``nnx.Einsum`` that contracts the input's trailing axes
    with the kernel's leading ones (``"bsd,dnh->bsnh"``) are reshaped to one ``(prod(in),
    prod(out))`` matrix, and the new layer flattens / reshapes its input and output the same way.
    A selected layer of these types that has no such form (other axes, batch axes, a diagonal
    einsum) is left dense, with a ``UserWarning`` naming it and the reason.

    Args:
      model: modified in place and returned.
      rank_ratio: low-rank parameter ratio per matrix; rank = :func:`rank_for_ratio`.
      select: ``select(path, module) -> bool`` picks the layers (default: encoder linears only).
      sparse: keep the sparse residual (``False``: low-rank-only baseline).
      report: also return a :class:`ConvertReport` (converted and skipped layers with reasons).

    Returns:
      ``model`` (or ``(model, report)``); before any pruning its outputs equal the dense model's
      (up to float rounding).

    Raises:
      ValueError: ``select`` matched nothing, or picked a module that is not a linear layer.
    """
    name = lambda path: "/".join(map(str, path))
    targets, skipped = [], {}
    for path, m in nnx.iter_modules(model):
        if not path:
            continue
        if select(path, m):
            targets.append((path, m))
        elif isinstance(m, (*_LINEAR_TYPES, nnx.Conv)):
            skipped[name(path)] = "not selected"
    if not targets:
        raise ValueError("convert found no layer to replace: select matched no linear layer")
    converted = []
    for path, m in targets:
        if not isinstance(m, _LINEAR_TYPES):
            raise ValueError(
                f"select picked {name(path)}, which is a {type(m).__name__}, not nnx.Linear,"
                " nnx.LinearGeneral or nnx.Einsum"
            )
        matrix = _as_matrix(m)
        if isinstance(matrix, str):
            skipped[name(path)] = matrix
            warnings.warn(f"losparse.convert left {name(path)} dense: {matrix}", stacklevel=2)
            continue
        kernel, bias, in_shape, out_shape = matrix
        new = LoSparseLinear.from_kernel(
            kernel,
            bias,
            rank_for_ratio(kernel.shape, rank_ratio),
            sparse=sparse,
            in_shape=in_shape,
            out_shape=out_shape,
        )
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        _set_child(parent, path[-1], new)
        converted.append(name(path))
    return (model, ConvertReport(converted, skipped)) if report else model


# --------------------------------------------------------------------------------------------
# Pruning transform.


class LoSparseState(NamedTuple):
    """State of :func:`losparse_pruning`; one entry per ``S`` leaf in the tuples."""

    count: jax.Array  # int32 step counter t
    ipt: tuple  # I within the current delta_t window (running mean of |S * grad S|)
    exp_avg_ipt: tuple  # EMA of I (beta1), paper §3 (PLATON smoothing)
    exp_avg_unc: tuple  # EMA of |I - EMA(I)| (beta2), PLATON uncertainty; unused if beta2 == 1
    keep: tuple  # bool (out,) mask of the kept output neurons
    inner_state: Any


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def sparse_leaves(params: Any) -> list[bool]:
    """For each array leaf of ``params`` (``jax.tree.leaves`` order): is it an ``S`` matrix?

    A leaf is ``S`` if it sits in a :class:`LoSparseS` variable (``nnx.State`` trees) or, for plain
    dict trees (``State.to_pure_dict()``), if its last key is ``"S"``.
    """
    flags: list[bool] = []

    def visit(path, node):
        if isinstance(node, nnx.Variable):
            n = len(jax.tree.leaves(node))
            flags.extend([isinstance(node, LoSparseS)] * n)
        else:
            keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
            keys = [k for k in keys if k != "value"]
            flags.append(bool(keys) and keys[-1] == "S")

    jax.tree_util.tree_map_with_path(visit, params, is_leaf=_is_variable)
    return flags


def neuron_scores(score: jax.Array) -> jax.Array:
    """Structured score of each output neuron: the mean of its column of the ``(in, out)`` score
    matrix (reference ``structured_method='mean'`` over a torch weight's input dimension)."""
    return score.mean(axis=0)


def _global_keep(scores: Sequence[jax.Array], sizes: Sequence[int], keep_fraction) -> list:
    """One global threshold over all neurons of all ``S``: keep the highest-scoring neurons whose
    cumulative parameter count stays within ``keep_fraction`` of all ``S`` parameters (the
    reference's global ``kthvalue`` over entries, with an exact count)."""
    flat = jnp.concatenate([s.astype(jnp.float32) for s in scores])
    weight = jnp.concatenate([jnp.full(s.shape, n, jnp.float32) for s, n in zip(scores, sizes)])
    total = float(sum(int(s.shape[0]) * n for s, n in zip(scores, sizes)))
    budget = jnp.floor(keep_fraction * total + 1e-3)
    order = jnp.argsort(-flat, stable=True)
    kept_sorted = jnp.cumsum(weight[order]) <= budget
    keep = jnp.zeros(flat.shape, bool).at[order].set(kept_sorted)
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.shape[0]])
        start += s.shape[0]
    return out


def losparse_pruning(
    schedule: Callable[[jax.Array], ArrayLike],
    *,
    beta1: float = 0.85,
    beta2: float = 1.0,
    delta_t: int = 10,
    inner: optax.GradientTransformation | None = None,
    where: Callable[[Any], Sequence[bool]] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Structured pruning of the sparse residuals ``S`` (LoSparse §3, Algorithm 1).

    At step ``t`` (after the optimizer step ``S' = S + u``), with ``g`` the gradient of ``S``:

    * importance ``I = |S' * g|`` (sensitivity), averaged over a window of ``delta_t`` steps;
    * every ``delta_t`` steps the window mean enters the EMA ``Ibar <- beta1 Ibar + (1-beta1) I``
      and, for ``0 < beta2 < 1``, the uncertainty ``U <- beta2 U + (1-beta2)|I - Ibar|``;
      the score is ``Ibar`` (``beta2 == 1``), ``Ibar * U`` (``0 < beta2 < 1``) or
      ``Ibar * |I - Ibar|`` (``beta2 == 0``), as in the reference ``Pruner``;
    * every ``delta_t`` steps from ``t = delta_t`` on (never before the first importance window
      has entered the EMA, whatever ``schedule(0)`` is), each output neuron (column of ``S``) is
      scored by its column mean and one global threshold over all ``S`` keeps a ``1 - schedule(t)`` fraction of the ``S``
      parameters (whole neurons, exact count). The final sparsity is reached at the first
      refresh in the schedule's final phase, so that phase should last at least ``delta_t`` steps;
    * the emitted update of a pruned column is ``-S``, so ``optax.apply_updates`` leaves it exactly
      zero, and it stays zero until a later refresh revives the neuron. ``A``, ``B``, ``S`` and
      all other parameters are trained by ``inner``.

    Args:
      schedule: ``step -> sparsity`` of ``S`` (fraction of ``S`` parameters pruned), e.g.
        :func:`jaxcomp.pruning.schedules.cubic`.
      beta1: EMA factor of the importance, in ``[0, 1)``.
      beta2: uncertainty EMA factor in ``[0, 1]``; ``1`` disables the uncertainty term.
      delta_t: window length / mask refresh interval (steps).
      inner: the optimizer whose updates are pruned (e.g. ``optax.adamw(lr)``); then this
        transform receives raw gradients. If ``None`` it must come *last* in an ``optax.chain``:
        the importance uses the extra argument ``grads=`` when given, else the incoming updates
        (for SGD these are ``-lr * grad``, which ranks neurons identically).
      where: ``where(params) -> list[bool]`` marking ``S`` leaves (``jax.tree.leaves`` order);
        default :func:`sparse_leaves`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`LoSparseState`; unknown
      extra arguments are passed to ``inner`` (if it accepts them) and otherwise ignored.
    """
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
    if not 0.0 <= beta2 <= 1.0:
        raise ValueError(f"beta2 must be in [0, 1], got {beta2}")
    if int(delta_t) != delta_t or delta_t < 1:
        raise ValueError(f"delta_t must be a positive integer, got {delta_t}")
    if inner is not None:
        inner = optax.with_extra_args_support(inner)
    find = where if where is not None else sparse_leaves

    def _s_index(params):
        flags = list(find(params))
        leaves = jax.tree.leaves(params)
        if len(flags) != len(leaves):
            raise ValueError(f"where returned {len(flags)} flags for {len(leaves)} leaves")
        idx = [i for i, f in enumerate(flags) if f]
        if not idx:
            raise ValueError("losparse_pruning found no S matrix in params (see `where`)")
        for i in idx:
            if leaves[i].ndim != 2:
                raise ValueError(f"S leaf {i} must be 2-D (in, out), got shape {leaves[i].shape}")
        return idx, leaves

    def init_fn(params):
        idx, leaves = _s_index(params)
        # Distinct buffers per field: train steps donate the state, and XLA refuses to donate
        # one buffer twice.
        zeros = lambda: tuple(jnp.zeros(leaves[i].shape, jnp.float32) for i in idx)
        return LoSparseState(
            count=jnp.zeros([], jnp.int32),
            ipt=zeros(),
            exp_avg_ipt=zeros(),
            exp_avg_unc=zeros(),
            keep=tuple(jnp.ones((leaves[i].shape[1],), bool) for i in idx),
            inner_state=inner.init(params) if inner is not None else optax.EmptyState(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("losparse_pruning needs params: call update(updates, state, params)")
        idx, p_leaves = _s_index(params)
        grads = extra_args.pop("grads", None)
        if inner is not None:
            g_leaves = jax.tree.leaves(updates)
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        else:
            g_leaves = jax.tree.leaves(grads if grads is not None else updates)
            inner_state = state.inner_state
        u_leaves, treedef = jax.tree.flatten(updates)
        t = state.count
        local = t % delta_t
        is_window_start = local == 0
        new_ipt, new_avg, new_unc, scores = [], [], [], []
        for j, i in enumerate(idx):
            s_new = (p_leaves[i] + u_leaves[i]).astype(jnp.float32)
            cur = jnp.abs(s_new * g_leaves[i].astype(jnp.float32))
            ipt, avg, unc = state.ipt[j], state.exp_avg_ipt[j], state.exp_avg_unc[j]
            avg_w = beta1 * avg + (1.0 - beta1) * ipt
            unc_w = beta2 * unc + (1.0 - beta2) * jnp.abs(ipt - avg_w) if 0 < beta2 < 1 else unc
            avg = jnp.where(is_window_start, avg_w, avg)
            unc = jnp.where(is_window_start, unc_w, unc)
            lf = local.astype(jnp.float32)
            ipt = jnp.where(is_window_start, cur, (ipt * lf + cur) / (lf + 1.0))
            if beta2 == 1.0:
                score = avg
            elif beta2 > 0.0:
                score = avg * unc
            else:
                score = avg * jnp.abs(ipt - avg)
            new_ipt.append(ipt)
            new_avg.append(avg)
            new_unc.append(unc)
            scores.append(neuron_scores(score))
        keep_fraction = 1.0 - jnp.asarray(schedule(t), jnp.float32)
        sizes = [int(p_leaves[i].shape[0]) for i in idx]
        fresh = _global_keep(scores, sizes, keep_fraction)
        # No refresh before the first window has entered the EMA (t < delta_t): with all-zero
        # scores the threshold would rank neurons by tree order and prune pretrained residuals
        # (the reference never masks during warm-up).
        refresh = is_window_start & (t >= delta_t)
        keep = tuple(jnp.where(refresh, f, k) for f, k in zip(fresh, state.keep))
        out = list(u_leaves)
        for j, i in enumerate(idx):
            u, p = u_leaves[i], p_leaves[i]
            out[i] = jnp.where(keep[j][None, :], u, -p.astype(u.dtype))
        new_state = LoSparseState(
            count=optax.safe_int32_increment(t),
            ipt=tuple(new_ipt),
            exp_avg_ipt=tuple(new_avg),
            exp_avg_unc=tuple(new_unc),
            keep=keep,
            inner_state=inner_state,
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Export.


class LoSparseExported(nnx.Module):
    """Deployable LoSparse layer: ``y = (x A) B + b``, plus ``x S_kept`` scattered into the kept
    output neurons ``index`` (the reference's ``prune_sparse``: only non-zero columns stored)."""

    def __init__(
        self,
        a: ArrayLike,
        b: ArrayLike,
        s_kept: ArrayLike | None,
        index: ArrayLike | None,
        bias: ArrayLike | None,
        out_features: int,
        *,
        in_shape: Sequence[int] | None = None,
        out_shape: Sequence[int] | None = None,
    ):
        self.out_features = out_features
        n_in = int(np.shape(a)[0])
        self.in_shape, self.out_shape = _check_shapes(n_in, out_features, in_shape, out_shape)
        self.A = LoSparseA(jnp.asarray(a))
        self.B = LoSparseB(jnp.asarray(b))
        has_s = s_kept is not None and np.asarray(index).size > 0
        self.S = LoSparseS(jnp.asarray(s_kept)) if has_s else None
        self.index = nnx.Variable(jnp.asarray(index, jnp.int32)) if has_s else None
        self.bias = nnx.Param(jnp.asarray(bias)) if bias is not None else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x, lead = _flatten_in(x, self.in_shape)
        if self.A[...].shape[1] > 0:
            y = (x @ self.A[...]) @ self.B[...]
        else:
            y = jnp.zeros((*x.shape[:-1], self.out_features), x.dtype)
        if self.S is not None:
            y = y.at[..., self.index[...]].add(x @ self.S[...])
        y = y if self.bias is None else y + self.bias[...]
        return _unflatten_out(y, lead, self.out_shape)


def export(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every :class:`LoSparseLinear` replaced by :class:`LoSparseExported`
    storing only the non-zero columns of ``S`` (and no ``S`` at all when every column is pruned).
    Runs eagerly (the stored shapes depend on the pruning)."""
    model = nnx.clone(model)
    targets = [(p, m) for p, m in nnx.iter_modules(model) if p and isinstance(m, LoSparseLinear)]
    if not targets:
        raise ValueError("export found no LoSparseLinear layer in the model")
    for path, m in targets:
        if m.S is not None:
            s = np.asarray(m.S[...])
            index = np.flatnonzero(np.any(s != 0, axis=0))
            s_kept = s[:, index]
        else:
            index, s_kept = np.zeros((0,), np.int32), None
        new = LoSparseExported(
            m.A[...],
            m.B[...],
            s_kept,
            index,
            None if m.bias is None else m.bias[...],
            m.out_features,
            in_shape=m.in_shape,
            out_shape=m.out_shape,
        )
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        _set_child(parent, path[-1], new)
    return model


def parameter_report(model: nnx.Module, filter: Any = nnx.Variable) -> dict[str, int]:
    """Real stored size of ``model``: ``{"params": count, "bytes": bytes}`` over all variables
    matching ``filter`` (index arrays of exported layers count as stored bytes too)."""
    leaves = jax.tree.leaves(nnx.state(model, filter))
    return {
        "params": int(sum(x.size for x in leaves)),
        "bytes": int(sum(x.size * x.dtype.itemsize for x in leaves)),
    }


# --------------------------------------------------------------------------------------------
# Save / load of the exported form.

_META_KEY = "jaxcomp.losparse.exported"


def _key(path: Sequence) -> str:
    return ".".join(map(str, path))


def _stored_variables(model: nnx.Module) -> list[tuple[tuple, nnx.Variable]]:
    """Every variable except RNG keys/counts, as ``(path, variable)`` in a fixed order."""
    return list(nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState))))


def save_compressed(model: nnx.Module, path: str | os.PathLike) -> dict[str, int]:
    """Writes the deployable form of a LoSparse model to one safetensors file.

    :class:`LoSparseLinear` layers are first exported (:func:`export`: only the non-zero columns
    of ``S`` and their ``index``); then every variable of the model except RNG state is stored
    under its ``.``-joined path (``layers.0.query.A``, ``layers.0.query.S``,
    ``layers.0.query.index``, ``layers.0.query.bias``, ``embeddings.norm.scale``, ...). The
    header metadata lists the exported layers with their paths and ``out_features``, so
    :func:`load_compressed` can rebuild them from the stored shapes. ``model`` is not modified.

    Returns:
      ``{"bytes": file size, "tensors": number of arrays, "params": number of stored values}``.
    """
    from safetensors.numpy import save_file

    if any(isinstance(m, LoSparseLinear) for _, m in nnx.iter_modules(model)):
        model = export(model)
    layers = [
        {
            "path": list(p),
            "out_features": int(m.out_features),
            "in_shape": None if m.in_shape is None else list(m.in_shape),
            "out_shape": None if m.out_shape is None else list(m.out_shape),
        }
        for p, m in nnx.iter_modules(model)
        if p and isinstance(m, LoSparseExported)
    ]
    if not layers:
        raise ValueError("save_compressed found no LoSparseLinear or LoSparseExported layer")
    tensors = {
        _key(p): np.ascontiguousarray(np.asarray(v.get_value()))
        for p, v in _stored_variables(model)
    }
    save_file(tensors, os.fspath(path), metadata={_META_KEY: json.dumps(layers)})
    return {
        "bytes": os.path.getsize(path),
        "tensors": len(tensors),
        "params": int(sum(t.size for t in tensors.values())),
    }


def load_compressed(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Loads a file written by :func:`save_compressed` into ``model`` (modified and returned).

    ``model`` gives the architecture (e.g. a dense ``BertModel(cfg, rngs=nnx.Rngs(0))``, or one
    converted by :func:`convert`): the module at each stored LoSparse path is replaced by a
    :class:`LoSparseExported` whose ``A``, ``B``, kept ``S`` and ``index`` take the stored shapes,
    then every variable (except RNG state) is set from the file.

    Raises:
      ValueError: the file has no LoSparse metadata, a stored path is not in the model, or a key
        is missing, unknown or has another shape than the model's, naming the key and the file.
    """
    from safetensors import safe_open

    source = os.fspath(path)
    try:
        with safe_open(source, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # OSError, or the Rust reader's SafetensorError
        raise ValueError(f"{source!r}: cannot read safetensors: {e}") from e
    if _META_KEY not in meta:
        raise ValueError(f"{source!r} has no {_META_KEY!r} metadata (not from save_compressed)")
    for entry in json.loads(meta[_META_KEY]):
        lp = tuple(entry["path"])
        parent, old = None, model
        try:
            for key in lp:
                parent, old = old, (old[key] if isinstance(key, int) else getattr(old, key))
        except (AttributeError, IndexError, KeyError, TypeError):
            raise ValueError(f"{source!r}: stored layer {_key(lp)!r} is not in the model") from None
        get = lambda name, lp=lp: tensors.get(_key((*lp, name)))
        if get("A") is None:
            raise ValueError(f"{source!r}: missing key {_key((*lp, 'A'))!r}")
        stored = (int(get("A").shape[0]), int(entry["out_features"]))
        if isinstance(old, nnx.Linear):
            have = tuple(old.kernel.get_value().shape)
        elif isinstance(old, nnx.LinearGeneral):
            have = (math.prod(old.in_features), math.prod(old.out_features))
        elif isinstance(old, LoSparseLinear):
            have = (old.in_features, old.out_features)
        elif isinstance(old, LoSparseExported):
            have = (int(old.A.get_value().shape[0]), old.out_features)
        else:
            have = stored
        if have != stored:
            raise ValueError(
                f"{source!r}: stored layer {_key(lp)!r} maps {stored[0]} -> {stored[1]} features,"
                f" the model's maps {have[0]} -> {have[1]}"
            )
        new = LoSparseExported(
            get("A"),
            get("B"),
            get("S"),
            get("index") if get("index") is not None else np.zeros((0,), np.int32),
            get("bias"),
            int(entry["out_features"]),
            in_shape=entry.get("in_shape"),
            out_shape=entry.get("out_shape"),
        )
        _set_child(parent, lp[-1], new)
    variables = {_key(p): v for p, v in _stored_variables(model)}
    missing = sorted(set(variables) - set(tensors))
    unknown = sorted(set(tensors) - set(variables))
    if missing or unknown:
        raise ValueError(f"{source!r}: missing keys {missing[:5]}, unknown keys {unknown[:5]}")
    for k, var in variables.items():
        want, got = tuple(var.get_value().shape), tuple(tensors[k].shape)
        if want != got:
            raise ValueError(f"{source!r}: {k!r} has shape {got}, the model expects {want}")
    for k, var in variables.items():
        var.set_value(jnp.asarray(tensors[k]))
    return model

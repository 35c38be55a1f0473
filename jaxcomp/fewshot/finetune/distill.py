"""RFS and SKD: a pretrained embedding, self-distilled, with a logistic-regression head at test.

- **RFS** (Tian et al., "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
  Need?", ECCV 2020; FewSAR's ``rfs_model.py``): phase 0 trains backbone + linear classifier on
  the base classes with ``gamma * CE``; phase 1 ("born-again", Furlanello et al. 2018) trains a
  *freshly initialised* network of the same shape with ``gamma * CE + alpha * KL_T`` to the
  frozen phase-0 network (``gamma = alpha = 0.5``, ``T = 4``).
- **SKD** (Rajasegaran et al., "Self-supervised Knowledge Distillation for Few-shot Learning",
  BMVC 2021; FewSAR's ``skd_model.py``): phase 0 sees every image at 0/90/180/270 degrees, with
  ``gamma * CE`` of the class logits of all four copies plus ``alpha * BCE`` of a rotation head
  that reads the class logits (``gamma = 1``, ``alpha = 0.1``); phase 1 trains against the frozen
  phase-0 network with ``gamma * KL_T(out(x), teacher(x)) + alpha * ||out(x) - out(rot180 x)|| / 3``
  (mean Euclidean distance of the logits; no CE, as the reference).
- **Test** (both): the backbone is frozen; features are L2-normalised and a multinomial logistic
  regression (L2 penalty, ``C = 1``: scikit-learn's ``LogisticRegression`` defaults, which the
  reference calls) is fitted on the support set. Here it is solved by Newton's method in a
  ``lax.scan``, so it runs jitted and ``vmap``ped over thousands of test episodes.

The teacher is a ``frozen_copy`` of the phase-0 network held by the model (its weights are model
state, not parameters, so they are checkpointed but never trained) and always runs in eval mode,
as the reference's ``distill_layer.train(False)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.distill.kd import logit_distillation
from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, frozen_copy, run_in_eval_mode


# ----------------------------------------------------------------------------- test-time head
def logistic_regression(
    feats: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    C: float = 1.0,
    iters: int = 15,
) -> tuple[jax.Array, jax.Array]:
    """Multinomial logistic regression with an L2 penalty on the weights (not the intercept):
    ``argmin_{W, b} 0.5 ||W||^2 + C * sum_i CE(x_i W + b, y_i)``, scikit-learn's
    ``LogisticRegression(penalty="l2", C=C)`` (multinomial) objective.

    Solved by ``iters`` Newton steps from zero (the objective is strictly convex in ``W``; the
    intercepts' softmax-invariant direction is fixed at ``mean(b) = 0``, where scikit-learn's
    zero-started solvers stay too). With more features than samples (``D > S``) the problem is
    solved in the span of the samples (``W = X^T A``, the representer theorem), so each Newton
    system has ``(min(D, S) + 1) * K`` unknowns. ``feats (S, D)``, ``labels (S,)`` ->
    ``(W (D, K), b (K,))``.
    """
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if feats.ndim != 2 or labels.shape != feats.shape[:1]:
        raise ValueError(f"need feats (S, D) and labels (S,), got {feats.shape}, {labels.shape}")
    s, d = feats.shape
    k = num_classes
    x = feats.astype(jnp.float32)
    y = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    dual = d > s
    gram = x @ x.T if dual else None
    n = s if dual else d

    def objective(flat):
        a, b = flat[: n * k].reshape(n, k), flat[n * k :]
        if dual:  # W = X^T a: logits G a + b, ||W||^2 = tr(a^T G a)
            logits, penalty = gram @ a + b, jnp.sum(a * (gram @ a))
        else:
            logits, penalty = x @ a + b, jnp.sum(a * a)
        ce = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1))
        return 0.5 * penalty + C * ce + 0.5 * k * jnp.mean(b) ** 2

    def newton(flat, _):
        g, h = jax.grad(objective)(flat), jax.hessian(objective)(flat)
        if dual:  # G may be singular in directions that do not change W: a tiny ridge
            h = h + 1e-6 * jnp.eye(h.shape[0])
        return flat - jnp.linalg.solve(h, g), None

    flat, _ = jax.lax.scan(newton, jnp.zeros((n + 1) * k, jnp.float32), None, length=iters)
    a, b = flat[: n * k].reshape(n, k), flat[n * k :]
    return (x.T @ a if dual else a), b


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize(x, p=2, dim=-1)``: ``x / max(||x||, eps)``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def rotations(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The 90, 180 and 270 degree rotations of NHWC images (the reference's ``rot_image_generation``
    on NCHW: ``transpose(H, W).flip(H)``, ``flip(H).flip(W)``, ``flip(H).transpose(H, W)``)."""
    r90 = jnp.flip(jnp.swapaxes(x, 1, 2), 1)
    r180 = jnp.flip(x, (1, 2))
    r270 = jnp.swapaxes(jnp.flip(x, 1), 1, 2)
    return r90, r180, r270


def mean_l2_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """The reference's ``L2DistLoss``: mean over rows of ``||a_i - b_i||_2``. Rows that are equal
    (an image that its 180-degree rotation leaves unchanged) contribute 0 with gradient 0, not the
    NaN of ``sqrt'(0)`` (the reference replaces a NaN loss by 0 for the same reason)."""
    sq = jnp.sum((a - b) ** 2, axis=-1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.mean(jnp.where(sq > 0, jnp.sqrt(safe), 0.0))


class Classifier(nnx.Module):
    """Backbone + linear classifier over the base classes (the phase-0 network and the
    teacher)."""

    def __init__(self, backbone: nnx.Module, head: nnx.Module):
        self.backbone, self.head = backbone, head

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.backbone(x))


# ----------------------------------------------------------------------------- methods
class RFS(FewShotModel):
    """Backbone + linear classifier, pretrained then born-again self-distilled; logistic
    regression on L2-normalised features at test (see the module docstring)."""

    training = ("pretrain", "pretrain")

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        num_classes: int,
        gamma: float = 0.5,
        alpha: float = 0.5,
        temperature: float = 4.0,
        lr_C: float = 1.0,
        lr_iters: int = 15,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        for name, v in (("gamma", gamma), ("alpha", alpha)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self._arch = (backbone, in_channels, width, feat_dim, num_classes)
        self.net = self._fresh_net(rngs)
        self.gamma, self.alpha, self.temperature = gamma, alpha, temperature
        self.lr_C, self.lr_iters = lr_C, lr_iters
        self.phase = 0
        self.teacher = nnx.data(None)

    def _fresh_net(self, rngs: nnx.Rngs) -> Classifier:
        backbone, in_channels, width, feat_dim, num_classes = self._arch
        return Classifier(
            build_backbone(backbone, in_channels, width=width, rngs=rngs),
            nnx.Linear(feat_dim, num_classes, rngs=rngs),
        )

    @property
    def backbone(self) -> nnx.Module:
        return self.net.backbone

    def start_phase(self, phase: int, rngs: nnx.Rngs) -> None:
        """Phase 1: the phase-0 network becomes the frozen teacher; the student is a fresh
        network of the same shape (born-again)."""
        if phase != 1:
            raise ValueError(f"{type(self).__name__} has phases 0 and 1, got {phase}")
        self.teacher = frozen_copy(self.net)
        self.net = self._fresh_net(rngs)
        self.phase = 1

    def teacher_logits(self, x: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(run_in_eval_mode(self.teacher, x))

    def classify_loss(self, x: jax.Array, y: jax.Array):
        out = self.net(x)
        ce, acc = cross_entropy(out, y)
        loss = self.gamma * ce
        if self.phase == 1:
            loss = loss + self.alpha * logit_distillation(
                out, self.teacher_logits(x), self.temperature
            )
        return loss, {"accuracy": acc, "ce": ce}

    def predict_features(self, support, query, key):
        del key  # deterministic (the reference: random_state=0, lbfgs)
        way, shot = support.shape[:2]
        w, b = logistic_regression(
            l2_normalize(support.reshape(way * shot, -1)),
            jnp.repeat(jnp.arange(way), shot),
            way,
            C=self.lr_C,
            iters=self.lr_iters,
        )
        return l2_normalize(query.reshape(query.shape[0], -1)) @ w + b

    def logits(self, support, query):
        return self.predict_features(support, query, None)


class SKD(RFS):
    """RFS's network with a rotation head: phase 0 adds rotation self-supervision, phase 1
    distils the frozen phase-0 network and asks for rotation-invariant logits (see the module
    docstring). Phase 1 starts from the phase-0 weights, as the reference (whose
    ``DistillLayer`` loads the teacher checkpoint into the student's own modules before copying
    them); ``student_init="fresh"`` re-initialises instead."""

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        num_classes: int,
        gamma: float = 1.0,
        alpha: float = 0.1,
        temperature: float = 4.0,
        student_init: str = "teacher",
        lr_C: float = 1.0,
        lr_iters: int = 15,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        if student_init not in ("teacher", "fresh"):
            raise ValueError(f"student_init must be 'teacher' or 'fresh', got {student_init!r}")
        super().__init__(
            in_channels,
            feat_dim=feat_dim,
            num_classes=num_classes,
            gamma=gamma,
            alpha=alpha,
            temperature=temperature,
            lr_C=lr_C,
            lr_iters=lr_iters,
            backbone=backbone,
            width=width,
            rngs=rngs,
        )
        self.rot_head = nnx.Linear(num_classes, 4, rngs=rngs)
        self.student_init = student_init

    def start_phase(self, phase: int, rngs: nnx.Rngs) -> None:
        if phase != 1:
            raise ValueError(f"{type(self).__name__} has phases 0 and 1, got {phase}")
        self.teacher = frozen_copy(self.net)
        if self.student_init == "fresh":
            self.net = self._fresh_net(rngs)
        self.phase = 1

    def classify_loss(self, x: jax.Array, y: jax.Array):
        b = x.shape[0]
        r90, r180, r270 = rotations(x)
        if self.phase == 0:
            out = self.net(jnp.concatenate([x, r90, r180, r270]))
            ce, acc = cross_entropy(out, jnp.tile(y, 4))
            rot = jax.nn.one_hot(jnp.repeat(jnp.arange(4), b), 4)
            z = self.rot_head(out)
            bce = jnp.mean(jnp.maximum(z, 0) - z * rot + jnp.log1p(jnp.exp(-jnp.abs(z))))
            loss = self.gamma * ce + self.alpha * bce
            return loss, {"accuracy": acc, "ce": ce, "rotation_bce": bce}
        out = self.net(jnp.concatenate([x, r180]))
        kd = logit_distillation(out[:b], self.teacher_logits(x), self.temperature)
        inv = mean_l2_distance(out[b:], out[:b]) / 3.0
        _, acc = cross_entropy(out, jnp.tile(y, 2))
        return self.gamma * kd + self.alpha * inv, {"accuracy": acc, "kd": kd, "rot_l2": inv}

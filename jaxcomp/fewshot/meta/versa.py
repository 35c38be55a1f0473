"""Versa: amortised probabilistic inference of the classifier (Gordon, Bronskill, Bauer, Nowozin
& Turner, "Meta-Learning Probabilistic Inference for Prediction", ICLR 2019).

Per episode, an amortisation network maps each class's support features, mean-pooled over the
shots (instance pooling), to a Gaussian over that class's weight vector and bias
``q(w_c, b_c) = N(mu_c, diag(exp(logvar_c)))``. The classes are handled independently and the
network is shared, so the head works for any ``way``. Predictions integrate over ``q`` by Monte
Carlo with the local reparametrisation trick (as Gordonjo/versa's ``run_classifier.py``): for a
query feature ``h`` the logit of class ``c`` is Gaussian with mean ``h . mu_w,c + mu_b,c`` and
variance ``h^2 . exp(logvar_w,c) + exp(logvar_b,c)``, and ``L`` samples of the logits give the
predictive

    log p(y | h) = log (1/L) sum_l softmax(logits_l)_y

whose negative mean over the query set is the episode loss (the paper's amortised ML-PIP
objective; the same value as FewSAR's ``task_score``). The scores returned for classification
are this log predictive; FewSAR and Gordonjo/versa instead classify by the log-mean-exp of the
raw logit samples, which leaves out each sample's softmax normaliser.

Layout as FewSAR's ``core/model/meta/versa.py``: the flattened backbone features go through
``Linear(D, d_theta) + BatchNorm + ReLU + Dropout`` (the paper's feature extractor head), then
four 3-layer ELU MLPs (weight mean, weight log-variance, bias mean, bias log-variance).
Defaults from FewSAR's ``config/versa.yaml``: ``d_theta`` 256, 10 samples, dropout 0.5, Conv64F
with LeakyReLU 0.2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcomp.fewshot.backbones import build_backbone
from jaxcomp.fewshot.base import FewShotModel, cross_entropy, episode_labels
from jaxcomp.fewshot.meta.checks import check_episode_features


def logit_distribution(
    h: jax.Array,
    w_mean: jax.Array,
    w_logvar: jax.Array,
    b_mean: jax.Array,
    b_logvar: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Mean and log-variance of the logits of ``h (M, d)`` under independent Gaussian weights
    ``w (way, d)`` and biases ``b (way,)`` (the local reparametrisation trick); ``(M, way)``
    each."""
    mean = h @ w_mean.T + b_mean
    logvar = jnp.log((h * h) @ jnp.exp(w_logvar).T + jnp.exp(b_logvar))
    return mean, logvar


def sample_logits(
    mean: jax.Array, logvar: jax.Array, key: jax.Array, num_samples: int
) -> jax.Array:
    """``num_samples`` reparametrised draws ``mean + eps * exp(logvar / 2)``, shaped
    ``(num_samples, *mean.shape)``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
    return mean + eps * jnp.exp(0.5 * logvar)


def log_predictive(logit_samples: jax.Array) -> jax.Array:
    """``log (1/L) sum_l softmax(logits_l)``: the Monte-Carlo log predictive of Versa of
    ``logit_samples (L, M, way)`` -> ``(M, way)``, computed stably as a log-mean-exp."""
    num = logit_samples.shape[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(logit_samples, -1), axis=0) - math.log(num)


class Amortizer(nnx.Module):
    """Linear -> ELU -> Linear -> ELU -> Linear (FewSAR's ``Predictor``, the paper's Table D.2)."""

    def __init__(self, dim: int, hidden: int, out: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jax.nn.elu(self.l2(jax.nn.elu(self.l1(x)))))


class Versa(FewShotModel):
    """Conv64F (flattened) + ``Linear/BN/ReLU/Dropout`` to ``d_theta`` + amortised Gaussian
    classifier per class; episode loss ``-mean log p(y|x)`` with ``num_samples`` samples.

    Test time (``predict_features``) draws the samples with the episode's key, as FewSAR's
    ``set_forward`` samples at test time; the scores are the log predictive probabilities."""

    def __init__(
        self,
        in_channels: int,
        *,
        feat_dim: int,
        d_theta: int = 256,
        num_samples: int = 10,
        dropout: float = 0.5,
        leaky_relu: bool = True,
        backbone: str = "conv64f",
        width: int = 64,
        rngs: nnx.Rngs,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if d_theta < 1:
            raise ValueError(f"d_theta must be >= 1, got {d_theta}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = build_backbone(
            backbone, in_channels, width=width, leaky_relu=leaky_relu, rngs=rngs
        )
        self.proj = nnx.Linear(feat_dim, d_theta, rngs=rngs)
        self.proj_bn = nnx.BatchNorm(d_theta, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.weight_mean = Amortizer(d_theta, d_theta, d_theta, rngs=rngs)
        self.weight_logvar = Amortizer(d_theta, d_theta, d_theta, rngs=rngs)
        self.bias_mean = Amortizer(d_theta, d_theta, 1, rngs=rngs)
        self.bias_logvar = Amortizer(d_theta, d_theta, 1, rngs=rngs)
        self.sample_rngs = rngs["sample"].fork()
        self.feat_dim, self.d_theta, self.num_samples = feat_dim, d_theta, num_samples

    def features(self, x: jax.Array) -> jax.Array:
        """``Dropout(ReLU(BN(Linear(x))))``: ``(B, D) -> (B, d_theta)``."""
        return self.drop(jax.nn.relu(self.proj_bn(self.proj(x))))

    def classifier(self, support_h: jax.Array):
        """``(w_mean, w_logvar, b_mean, b_logvar)`` from ``support_h (way, shot, d_theta)``:
        the amortisation networks applied to each class's mean feature."""
        nu = support_h.mean(axis=1)
        return (
            self.weight_mean(nu),
            self.weight_logvar(nu),
            self.bias_mean(nu)[:, 0],
            self.bias_logvar(nu)[:, 0],
        )

    def _head(self, support, query, key):
        check_episode_features(support, query, self.feat_dim)
        way, shot = support.shape[:2]
        h = self.features(jnp.concatenate([support.reshape(way * shot, -1), query]))
        mean, logvar = logit_distribution(
            h[way * shot :], *self.classifier(h[: way * shot].reshape(way, shot, -1))
        )
        return log_predictive(sample_logits(mean, logvar, key, self.num_samples))

    def logits(self, support, query):
        """Log predictive probabilities ``(M, way)``, sampled with the module's own key stream."""
        return self._head(support, query, self.sample_rngs())

    def predict_features(self, support, query, key):
        return self._head(support, query, key)

    def episode_loss(self, support_x, query_x):
        way, q = query_x.shape[:2]
        fs, fq = self.embed_episode(support_x, query_x)
        # cross-entropy of the log predictive = -mean_m log (1/L) sum_l p(y_m | logits_l)
        loss, acc = cross_entropy(self.logits(fs, fq), episode_labels(way, q))
        return loss, {"accuracy": acc}

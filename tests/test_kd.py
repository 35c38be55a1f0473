"""LoSparse's distillation loss against a numpy transcription of the reference
(``F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T**2`` + sum of MSEs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.distill import distillation_loss, hidden_state_mse, logit_distillation


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_reference(s, t, hs, ht, temperature, a_out, a_layer):
    log_p = _np_log_softmax(s.astype(np.float64) / temperature)
    q = np.exp(_np_log_softmax(t.astype(np.float64) / temperature))
    kl = (q * (np.log(q) - log_p)).sum() / s.shape[0] * temperature**2  # batchmean
    mse = sum(((a - b) ** 2).mean() for a, b in zip(hs, ht))
    return a_out * kl + a_layer * mse, kl, mse


def test_distillation_loss_matches_numpy_transcription():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)) * 3, rng.normal(size=(5, 3)) * 3
    hs = [rng.normal(size=(5, 4, 8)) for _ in range(3)]
    ht = [rng.normal(size=(5, 4, 8)) for _ in range(3)]
    want, kl, mse = _np_reference(s, t, hs, ht, 2.0, 0.7, 15.0)
    np.testing.assert_allclose(logit_distillation(s, t), kl, rtol=1e-5)
    np.testing.assert_allclose(hidden_state_mse(hs, ht), mse, rtol=1e-5)
    got = distillation_loss(s, t, hs, ht, alpha_output=0.7, alpha_layer=15.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(logit_distillation(s, s), 0.0, atol=1e-6)
    # T = 1 is the plain KL; alpha 0 skips a term (hidden states then not needed)
    np.testing.assert_allclose(
        distillation_loss(s, t, alpha_layer=0.0, temperature=1.0),
        _np_reference(s, t, [], [], 1.0, 1.0, 0.0)[0],
        rtol=1e-5,
    )
    # masked mean over real tokens only
    mask = np.ones((5, 4), np.int32)
    mask[:, 3:] = 0
    want_masked = sum(((a - b)[:, :3] ** 2).mean() for a, b in zip(hs, ht))
    np.testing.assert_allclose(hidden_state_mse(hs, ht, mask), want_masked, rtol=1e-5)


def test_teacher_gets_no_gradient_and_errors():
    rng = np.random.default_rng(1)
    s, t = jnp.asarray(rng.normal(size=(4, 2))), jnp.asarray(rng.normal(size=(4, 2)))
    gs, gt = jax.grad(lambda a, b: logit_distillation(a, b), argnums=(0, 1))(s, t)
    assert np.abs(np.asarray(gs)).max() > 0 and np.abs(np.asarray(gt)).max() == 0
    with pytest.raises(ValueError, match="temperature"):
        logit_distillation(s, t, 0.0)
    with pytest.raises(ValueError, match="2 student and 1 teacher"):
        hidden_state_mse([s, s], [t])

"""ANIL, "Almost No Inner Loop" (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020, Sec. 4).

MAML with the inner loop restricted to the network's head: per task, the head alone takes
``inner_steps`` SGD steps on the support features, and the outer loop meta-learns backbone and
head by the query loss after adaptation (the backbone's meta-gradient flows through the query
features and, second order, through the inner gradients' dependence on the support features).
The backbone therefore runs once per episode, outside the inner loop, and test-time adaptation
needs only frozen backbone features: ANIL is tested on features (``test_on = "features"``),
so the protocol embeds the test pool once and adapts thousands of heads ``vmap``ped.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxcomp.fewshot.meta.maml import MetaLearner, check_way, episode_ce, inner_loop, meta_loss


class ANIL(MetaLearner):
    """ANIL on Conv64F (flattened) + a linear head of ``way`` outputs; only the head is adapted
    per episode (``inner_steps`` SGD steps of ``inner_lr``, ``test_inner_steps`` at test).

    Defaults are FewSAR's ``config/anil.yaml`` (``inner_param: lr 1e-3, iter 10``, one ``iter``
    for training and testing; Conv64F flattened; ``ANILLayer`` = one ``Linear(feat_dim, way)``,
    its hidden layer commented out there), second order as its ``create_graph=True``.

    BatchNorm is the backbone's ordinary one (the reference converts only the head to
    fast weights): in training, one backbone pass over the episode's support and query images
    in train mode (batch statistics of the episode, running statistics updated), as the
    reference's ``emb_func(image)``; at test, eval mode (running statistics), which makes the
    backbone a per-image function, so test features are computed once per image.
    """

    test_on = "features"
    default_inner_lr = 1e-3  # FewSAR config/anil.yaml, inner_param.lr
    default_inner_steps = 10  # FewSAR config/anil.yaml, inner_param.iter

    def head_functional(self):
        """``(apply, head_params)``: the head as ``apply(head_params, feats) -> logits`` and
        its parameters (pure arrays, differentiable)."""
        graphdef, params = nnx.split(self.head)

        def apply(p, f):
            return nnx.merge(graphdef, p)(f.reshape(f.shape[0], -1))

        return apply, nnx.as_pure(params)

    def adapt_head(self, support: jax.Array, *, inner_steps: int | None = None) -> Any:
        """The head's parameters after ``inner_steps`` (default ``test_inner_steps``) SGD steps
        on support features ``(way, shot, *F)``; nothing else is touched."""
        check_way(support, self.way)
        apply, params = self.head_functional()
        kw = self.inner_kwargs(inner_steps)
        return inner_loop(episode_ce(apply), params, support, has_aux=True, **kw)

    def adapt(self, support_x: jax.Array, *, inner_steps: int | None = None) -> Any:
        """The whole ``nnx.Param`` tree (pure) after adapting to support images ``(way, shot,
        H, W, C)`` (backbone in the module's current mode): the backbone's leaves are this
        module's own, the head's are ``adapt_head``'s."""
        check_way(support_x, self.way)
        way, shot = support_x.shape[:2]
        feats = self.embed(support_x.reshape(way * shot, *support_x.shape[2:]))
        head = self.adapt_head(feats.reshape(way, shot, *feats.shape[1:]), inner_steps=inner_steps)
        params = nnx.as_pure(nnx.state(self, nnx.Param))
        params["head"] = head
        return params

    def episode_loss(self, support_x: jax.Array, query_x: jax.Array):
        """Query cross-entropy of the head adapted on the support features (one backbone pass
        over the episode); its gradient reaches backbone and head."""
        check_way(support_x, self.way)
        way, q = query_x.shape[:2]
        if way != self.way or query_x.shape[2:] != support_x.shape[2:]:
            raise ValueError(
                f"query must be (way, query, ...) like support {support_x.shape}, got "
                f"{query_x.shape}"
            )
        fs, fq = self.embed_episode(support_x, query_x)
        apply, params = self.head_functional()
        loss, acc = meta_loss(
            episode_ce(apply),
            params,
            fs,
            fq.reshape(way, q, *fq.shape[1:]),
            has_aux=True,
            **self.inner_kwargs(self.inner_steps),
        )
        return loss, {"accuracy": acc}

    def logits(self, support: jax.Array, query: jax.Array) -> jax.Array:
        """Scores ``(M, way)`` of query features ``(M, *F)`` under the head adapted on support
        features ``(way, shot, *F)`` with ``test_inner_steps`` steps."""
        apply, _ = self.head_functional()
        return apply(self.adapt_head(support), query)

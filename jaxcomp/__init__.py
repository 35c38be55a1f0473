"""jaxcomp: compressing and training neural networks efficiently in JAX/Flax.

Subpackages are the layers (see docs/design.md): ``pruning`` (compression operators on pytrees),
``optim`` (optax transforms), ``nn``/``models`` (Flax NNX modules and weight import), ``prover``
(differentiable theorem proving), ``numerics``, ``data`` and ``train``.
"""

__version__ = "0.1.0"

"""tlm_jax: pretrain, fine-tune and study tiny language models in JAX.

Layers, lowest first: ``errors`` -> ``config`` -> ``sharding``/``distributed`` -> ``data`` ->
``models`` | ``objectives`` -> ``generate`` -> ``train`` -> ``eval`` -> ``tasks`` -> ``hf`` ->
``cli``/``commands``. Lower layers never import higher ones (ARCHITECTURE.md; enforced by
``make lint``).
"""

__version__ = "0.1.0"

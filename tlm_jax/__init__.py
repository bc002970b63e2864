"""tlm_jax: pretrain, fine-tune and study tiny language models in JAX.

Layers, lowest first: ``config`` -> ``data`` -> ``objectives`` -> ``models`` ->
``train`` -> ``tasks``/``eval`` -> ``cli``/``experiments``. Lower layers never
import higher ones.
"""

__version__ = "0.1.0"

"""ibjax: information-bottleneck objectives for deep learning in JAX.

A reimplementation of Kirsch, Lyle & Gal, "Unpacking Information Bottlenecks:
Unifying Information-Theoretic Objectives in Deep Learning".

Submodules are imported on demand so that ``import ibjax.losses`` stays light:

* ``ibjax.losses``       -- surrogate IB objectives (pure functions of arrays).
* ``ibjax.information``  -- exact discrete quantities for a categorical latent.
"""

__version__ = "0.2.0"

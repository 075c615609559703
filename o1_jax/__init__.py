"""o1_jax: O1 Embedder (think, then embed) in JAX/Flax."""

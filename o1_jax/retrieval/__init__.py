"""Retrieval: the ScaNN document index (`index`) and its numpy ground truth."""

from o1_jax.retrieval.index import Index, IndexFolderError, default_params, exact_search, recall_at_k

__all__ = ["Index", "IndexFolderError", "default_params", "exact_search", "recall_at_k"]

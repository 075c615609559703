"""Retrieval: the ScaNN document index (`vector_index`) and its numpy ground truth, the BM25 and
dense baselines (`bm25`, `dense`), and BEIR evaluation (`beir_eval`)."""

from o1_jax.retrieval.vector_index import Index, IndexFolderError, default_params, exact_search, recall_at_k

__all__ = ["Index", "IndexFolderError", "default_params", "exact_search", "recall_at_k"]

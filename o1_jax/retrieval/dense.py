"""The dense baseline: a sentence-transformers model from a local folder (e.g. all-MiniLM-L6-v2),
L2-normalised embeddings, compared by inner product (cosine). Used by evaluation and by the
synthesis committee."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from o1_jax import model_specs


class DenseEncoder:
    def __init__(self, path: str | os.PathLike, batch_size: int = 64, key: str = "path"):
        from sentence_transformers import SentenceTransformer  # heavy (torch); only dense users pay for it

        self.path = model_specs.resolve(path, key)
        self.model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """`[N, D]` float32, unit norm (queries and documents alike: the model has no prompts)."""
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

"""Thinking, embedding and the Python API of a trained O1 embedder."""

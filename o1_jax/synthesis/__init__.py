"""Thought synthesis: an expert LLM proposes candidate thoughts, a retrieval committee picks one.

  expert.py     `Expert.propose(records, n, rng_seed)`, few-shot prompts, `LlamaExpert` (o1_jax generation)
  committee.py  members (BM25, sentence-transformers, o1_jax) scoring by positive rank; soft / hard votes
  pipeline.py   the resumable, aligned loop and its summary; `run(config)` behind `python -m o1_jax.synthesize`
"""

from o1_jax.synthesis.committee import BM25Member, DenseMember, Member, O1Member, Vote, vote
from o1_jax.synthesis.expert import Expert, FewShotPool, GenerationSettings, LlamaExpert, build_messages
from o1_jax.synthesis.pipeline import read_inputs, run, summarize, synthesize

__all__ = ["BM25Member", "DenseMember", "Expert", "FewShotPool", "GenerationSettings", "LlamaExpert", "Member",
           "O1Member", "Vote", "build_messages", "read_inputs", "run", "summarize",
           "synthesize", "vote"]

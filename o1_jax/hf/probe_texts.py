"""Sample texts the exported tokenizers are checked on before an O1 folder is published (the model
card's snippets use them too), and the pooling token they must reproduce."""

from __future__ import annotations

# The pooling token (one of o1_jax.data.formatting.SPECIAL_TOKENS): every embedded sequence ends in it.
EMB = "<emb>"
PROBE_QUERIES = ("where does the friend of kamo rizel live ?", "What is O1 Embedder, and why think first?")
PROBE_DOCS = ("bane tosul lives in oslo , works as a baker and likes chess .", "Title. Some text, with 42 words.")
# A document that spells special tokens as text: o1_jax splits them as ordinary text, so must the export.
LITERAL_SPECIAL_DOC = "a passage that spells <emb> and <query> as text"


def text_ids(tokenizer, text: str) -> list[int]:
    """`text` tokenised on its own, with no special tokens added (how o1_jax tokenises each piece)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])

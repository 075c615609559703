"""The causal-LM view of an O1 folder: its tokenizer, the check that it gives o1_jax's ids, and the
generation config for thinking.

The causal-LM tokenizer is the training one with left padding (for batched generation), and if it
adds a BOS/EOS to plain text it is switched off, so `tokenizer(text)` gives exactly the ids o1_jax
fed in training. A tokenizer that would not reproduce the training formats stops the export.
"""

from __future__ import annotations

import json
import pathlib

from o1_jax.files import atomic_write_json
from o1_jax.hf.probe_texts import EMB, PROBE_DOCS, PROBE_QUERIES, text_ids


def causal_lm_tokenizer(tokenizer):
    """The training tokenizer, left padded, padding with eos when it has no pad token (as o1_jax does),
    adding no BOS/EOS of its own (in place; returned)."""
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    probe = PROBE_QUERIES[1]
    adds_tokens = tokenizer(probe)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]
    if adds_tokens and hasattr(tokenizer, "update_post_processor"):  # transformers 5 TokenizersBackend
        tokenizer.add_bos_token = False  # each setter rebuilds the post-processor as `$A`
        tokenizer.add_eos_token = False
    return tokenizer


def check_causal_lm_formats(tokenizer, formatter, source: str) -> None:
    """The card's transformers recipes (format strings + add_special_tokens=False) give o1_jax's ids;
    `source` (where the tokenizer came from) names it in the error."""
    eos = tokenizer.eos_token
    cases = []
    for q in PROBE_QUERIES:  # probes within the length limits (o1_jax truncates longer pieces)
        n = len(text_ids(tokenizer, q))
        if n <= formatter.max_query_tokens:
            cases.append((f"<query>{q}</query><thought>", formatter.prompt_ids(q)))
            cases.append((f"<query>{q}</query><thought>{EMB}", formatter.query_ids(q).ids))
            if n <= formatter.max_thought_tokens:
                cases.append((f"<query>{q}</query><thought>{q}{eos}{EMB}", formatter.query_ids(q, q).ids))
    cases += [(f"{d}{EMB}", formatter.doc_ids(d)) for d in PROBE_DOCS
              if len(text_ids(tokenizer, d)) <= formatter.max_doc_tokens]
    for text, expected in cases:
        got = text_ids(tokenizer, text)
        if got != list(expected):
            raise ValueError(f"{source}: tokenizing {text!r} gives ids {got}, but o1_jax's format gives "
                             f"{list(expected)}; the exported tokenizer would not reproduce the training format")


def write_generation_config(folder: pathlib.Path, tokenizer, max_new_tokens: int) -> None:
    """Greedy, one thought of at most the training length, as `O1Embedder.think(k=1)`."""
    cfg = json.loads((folder / "config.json").read_text())
    atomic_write_json(folder / "generation_config.json", {
        "bos_token_id": cfg.get("bos_token_id"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "max_new_tokens": int(max_new_tokens),
        "do_sample": False,
    })

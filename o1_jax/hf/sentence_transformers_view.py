"""The sentence-transformers view of an O1 folder: it embeds DOCUMENTS like `O1Embedder.encode_corpus`.

modules.json = Transformer (AutoModel -> `LlamaModel`, whose `last_hidden_state` is taken after the
final norm) -> Pooling("lasttoken") -> Normalize, over the causal LM's own files.

How sentence-transformers appends `<emb>` (sentence-transformers 6.x, transformers 5.x)
---------------------------------------------------------------------------------------
ST prompts can only prepend text, so the suffix comes from the tokenizer. One tokenizer folder
serves both views, and a `$A <emb>` post-processor written into tokenizer.json would make every
plain `tokenizer(text)` of the causal LM end in `<emb>` too, including the thinking prompt, which
must not. Instead the root tokenizer stays the training tokenizer, and only the copy that ST's
Transformer module loads is changed, through `processor_kwargs` in sentence_bert_config.json
(forwarded to `AutoTokenizer.from_pretrained`):

    eos_token="<emb>", add_eos_token=True, add_bos_token=False
        transformers 5 rebuilds the post-processor as `$A <emb>`: `<emb>` after every document,
        no BOS (training never had one); truncation to max_seq_length keeps it, since the
        tokenizer counts the special tokens it adds (max_seq_length = max_doc_tokens + 1).
    split_special_tokens=True
        a literal "<emb>" inside a document is split as text, as o1_jax's formatter does.
    padding_side="right"
        HF Llama numbers positions 0.. from the first column, so right padding gives every
        document the positions o1_jax gives it; "lasttoken" pooling reads the last real token
        (the appended `<emb>`) on either side, so left padding would work too, up to rounding.

ST embeds documents only: `encode_query` would embed a query as a document (`{q}<emb>`). Queries
(`<query>{q}</query><thought>...<emb>`) go through transformers or `O1Embedder`; see the card.
"""

from __future__ import annotations

import importlib.metadata
import pathlib

import transformers

from o1_jax.files import atomic_write_json
from o1_jax.hf.probe_texts import EMB, LITERAL_SPECIAL_DOC, PROBE_DOCS

# The kwargs that make sentence-transformers' tokenizer append the document suffix.
ST_PROCESSOR_KWARGS = {
    "eos_token": EMB,
    "add_eos_token": True,
    "add_bos_token": False,
    "split_special_tokens": True,
    "padding_side": "right",
}
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling",
     "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"},
]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_sentence_transformers(folder: pathlib.Path, hidden_size: int, max_seq_length: int) -> None:
    """modules.json, sentence_bert_config.json, config_sentence_transformers.json, pooling + normalize configs."""
    atomic_write_json(folder / "modules.json", ST_MODULES)
    atomic_write_json(folder / "sentence_bert_config.json", {
        "max_seq_length": int(max_seq_length),
        "do_lower_case": False,
        "transformer_task": "feature-extraction",
        "processor_kwargs": ST_PROCESSOR_KWARGS,
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    })
    versions = {"sentence_transformers": _version("sentence-transformers"), "transformers": _version("transformers"),
                "pytorch": _version("torch")}
    atomic_write_json(folder / "config_sentence_transformers.json", {
        "__version__": {k: v for k, v in versions.items() if v},
        "model_type": "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "requirements": {
            "sentence_transformers": {"specifier": ">=6.0", "reason": "modules.json names the 6.x module classes"},
            "transformers": {"specifier": ">=5.0", "reason": "the tokenizer appends <emb> through add_eos_token"},
        },
    })
    atomic_write_json(folder / "1_Pooling" / "config.json",
                      {"embedding_dimension": int(hidden_size), "pooling_mode": "lasttoken", "include_prompt": True})
    atomic_write_json(folder / "2_Normalize" / "config.json",
                      {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})


def check_sentence_transformers_tokenizer(folder: pathlib.Path, formatter, max_seq_length: int, source: str) -> None:
    """Loads the tokenizer the way ST's Transformer module will and compares documents with o1_jax's;
    `source` (where the tokenizer came from) names it in the error."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, **ST_PROCESSOR_KWARGS, model_max_length=max_seq_length)
    long_doc = " ".join(PROBE_DOCS * (formatter.max_doc_tokens // 4 + 1))  # longer than max_doc_tokens
    docs = [*PROBE_DOCS, LITERAL_SPECIAL_DOC, long_doc, "x"]
    batch = tok(docs, padding=True, truncation="longest_first")  # what ST's preprocess calls
    for doc, ids, mask, expected in zip(docs, batch["input_ids"], batch["attention_mask"],
                                          [formatter.doc_ids(x) for x in docs]):
        got = [i for i, m in zip(ids, mask) if m]
        if got != list(expected) or mask[0] != 1:
            raise ValueError(f"{source}: sentence-transformers would tokenize the document {doc[:40]!r}... as {got}, "
                             f"but o1_jax's format `{{passage}}<emb>` gives {list(expected)}")

"""The model card (README.md) of an O1 folder: what it is, special tokens, exact formats, usage
snippets that run as written, evaluation results and the training config."""

from __future__ import annotations

import dataclasses
import pathlib

import yaml

from o1_jax.files import atomic_write_text
from o1_jax.hf.probe_texts import PROBE_DOCS, PROBE_QUERIES

# Placeholder for the folder in the card's snippets (the tests substitute it).
PATH_PLACEHOLDER = "path/to/this/folder"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Where the exported weights come from."""
    workdir: str
    step: int
    config: dict  # run_config.json's "config"
    original_vocab: int | None  # the tokenizer's size before the O1 special tokens
    evals: list[tuple[str, dict]]  # (file name, results) from the workdir's eval/*.json


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What the card says about the exported model and its tokenizer."""
    architecture: str  # config.json's architectures[0]
    tied: bool  # tie_word_embeddings
    lora: bool  # trained with LoRA adapters (merged into the export)
    hidden_size: int
    max_query_tokens: int
    max_thought_tokens: int
    max_doc_tokens: int
    special_ids: dict[str, int]  # the O1 special tokens, in o1_jax.data.formatting.SPECIAL_TOKENS order
    eos_token: str
    eos_id: int
    pad_token: str
    pad_id: int


def _eval_table(evals: list[tuple[str, dict]]) -> str:
    if not evals:
        return "None found (no `eval/*.json` in the workdir; run `python -m o1_jax.evaluate`)."
    metrics: list[str] = []
    for _, r in evals:
        for m in r["modes"].values():
            metrics += [k for k, v in m.items()  # scores, not the timings (`*_s`)
                        if isinstance(v, (int, float)) and not k.endswith("_s") and k not in metrics]
    lines = ["| results file | split | queries | docs | mode | " + " | ".join(metrics) + " |",
             "|" + " --- |" * (5 + len(metrics))]
    for name, r in evals:
        for mode, m in r["modes"].items():
            cells = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "" for k in metrics]
            lines.append(f"| {name} | {r.get('split', '')} | {r.get('num_queries', '')} | {r.get('num_docs', '')} "
                         f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_model_card(folder: pathlib.Path, run: RunSummary, model: ModelSummary) -> None:
    """README.md: what this is, special tokens, exact formats, usage, evaluation, training config."""
    eos, pad = model.eos_token, model.pad_token
    rows = "\n".join(f"| `{t}` | {i} | {role} |" for (t, i), role in zip(model.special_ids.items(), (
        "opens the query", "closes the query", "starts the thought (the generation prompt ends here)",
        "pooling token: the embedding is the final hidden state here")))
    think_snippet = f'''import torch
import transformers

path = "{PATH_PLACEHOLDER}"
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def embed(sequences):
    """O1 sequences (each ending in <emb>) -> L2-normalised final hidden states at <emb>."""
    batch = tokenizer(sequences, add_special_tokens=False, padding=True, return_tensors="pt")  # left padding
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state[:, -1]  # after the final norm
    return torch.nn.functional.normalize(hidden.float(), dim=-1).numpy()


query = {PROBE_QUERIES[0]!r}
# 1. Think: greedy here (generation_config.json); for k > 1 thoughts sample with temperature=0.1, top_p=0.9.
prompt = tokenizer(f"<query>{{query}}</query><thought>", add_special_tokens=False, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**prompt)
thought = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
# 2. Embed the query with its thought, and without thinking.
query_emb = embed([f"<query>{{query}}</query><thought>{{thought}}{{tokenizer.eos_token}}<emb>"])
query_emb_no_think = embed([f"<query>{{query}}</query><thought><emb>"])
'''
    st_snippet = f'''from sentence_transformers import SentenceTransformer

st = SentenceTransformer(path)  # appends <emb> to every document itself
docs = {list(PROBE_DOCS)!r}
doc_emb = st.encode(docs)  # [N, {model.hidden_size}], L2-normalised
scores = query_emb @ doc_emb.T  # cosine similarities
'''
    untied_note = "" if model.tied else (
        "\n  Loading it, transformers lists `lm_head.weight` as UNEXPECTED: the LM head is not part of the"
        "\n  `LlamaModel` that embeds, and nothing is missing.")
    card = f"""---
library_name: transformers
pipeline_tag: feature-extraction
tags:
- sentence-transformers
- feature-extraction
- o1-embedder
- o1_jax
---

# O1 Embedder ({model.architecture}, step {run.step})

An O1 Embedder (Yan, Liu, Lian 2025, "O1 Embedder: Let Retrievers Think Before Action", arXiv:2502.07555)
trained with o1_jax (JAX/Flax) and exported by `python -m o1_jax.export` from the training
workdir `{run.workdir}`, checkpoint step {run.step}{" (LoRA adapters merged)" if model.lora else ""}.
The model first writes a *thought* about a query, then embeds the query with its thought at a final `<emb>`
token; documents are embedded at their own `<emb>`. An embedding is the final-layer hidden state (after
the last norm) at `<emb>`, L2-normalised, {model.hidden_size} dimensions; similarity is the inner product.

This folder is two models over the same weights:

* a `transformers` `{model.architecture}` (thinking; embedding any of the formats below), and
* a `sentence-transformers` model (Transformer -> last-token pooling -> Normalize) that embeds **documents**.
  Its tokenizer, configured by `processor_kwargs` in `sentence_bert_config.json`, appends `<emb>` to every
  text, pads on the right and truncates to {model.max_doc_tokens} text tokens + `<emb>`. It does not embed
  queries: `encode_query` would embed a query as a document; use the transformers recipe for queries.{untied_note}

## Special tokens

| token | id | role |
| --- | --- | --- |
{rows}
| `{eos}` (eos) | {model.eos_id} | ends a thought |
| `{pad}` (pad) | {model.pad_id} | padding |

## Formats

Exact token sequences. Each text piece is tokenised on its own with no special tokens (no BOS) and the
ids are concatenated; a special token's spelling inside a text is split as ordinary text; no spaces
are added around the special tokens. Text is stripped of surrounding whitespace first.

| what | sequence | text limits (tokens) |
| --- | --- | --- |
| thinking prompt | `<query>{{query}}</query><thought>` then generate up to `{eos}` | query <= {model.max_query_tokens}, thought <= {model.max_thought_tokens} |
| query with a thought | `<query>{{query}}</query><thought>{{thought}}{eos}<emb>` | as above |
| query, no thinking | `<query>{{query}}</query><thought><emb>` | query <= {model.max_query_tokens} |
| document | `{{title}} {{text}}<emb>` (a plain string: `{{text}}<emb>`) | <= {model.max_doc_tokens} |

Rows are left padded for thinking and may be padded on either side for embedding (the embedding is read
at the last real token). With k thoughts (k = 3 in the paper, 7 for MTEB; sampling temperature 0.1,
top-p 0.9), the query embedding is the mean of the k normalised vectors (o1_jax re-normalises the mean by
default; the paper does not).

## Usage

Thinking and query embeddings with `transformers`. The tokenizer pads on the left and adds no special
tokens of its own (`add_special_tokens=False` keeps it so for any tokenizer). The format strings are
tokenised whole, so a `<query>`, `</query>`, `<thought>` or `<emb>` spelt inside a query would become the
control token: remove such spellings first, or tokenise the pieces separately as o1_jax does.

```python
{think_snippet}```

Documents with `sentence-transformers` (>= 6; `encode` gives the same vectors as
`o1_jax.inference.embedder.O1Embedder.encode_corpus`):

```python
{st_snippet}```

With o1_jax itself: `O1Embedder.from_pretrained("{PATH_PLACEHOLDER}")` thinks and embeds in one pass.

## Evaluation

Results found in the workdir's `eval/` folder (computed by `o1_jax.evaluate` on the checkpoint that
was current when each file was written; the exported step is {run.step}):

{_eval_table(run.evals)}

## Training configuration

`run_config.json` of the workdir (o1_jax `ml_collections` config; tokenizer size before the O1 tokens:
{run.original_vocab}):

```yaml
{yaml.safe_dump(run.config, sort_keys=False, default_flow_style=False, width=100).rstrip()}
```
"""
    atomic_write_text(folder / "README.md", card)

"""`python -m o1_jax.export --workdir DIR --out OUT [--step N] [--overwrite] [--max_shard_size 5GB]`

Turns a training workdir's checkpoint (the latest, or `--step`) into one self-contained folder
(DIR may be a URL such as gs://bucket/run; OUT is a local folder):

  * a Hugging Face `LlamaForCausalLM` (LoRA merged): safetensors, config.json, the tokenizer with the
    O1 special tokens `<query> </query> <thought> <emb>`, and a generation config for thinking;
  * a sentence-transformers model over the same files that embeds DOCUMENTS like
    `O1Embedder.encode_corpus`: modules.json = Transformer (AutoModel -> `LlamaModel`, whose
    `last_hidden_state` is taken after the final norm) -> Pooling("lasttoken") -> Normalize;
  * a model card, README.md: training config, evaluation results, special tokens, formats, usage.

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

The causal-LM tokenizer is the training one with left padding (for batched generation), and if it
adds a BOS/EOS to plain text it is switched off, so `tokenizer(text)` gives exactly the ids o1_jax
fed in training. Both views are checked against o1_jax's `Formatter` before the folder is
published; a tokenizer that would not reproduce the training formats stops the export.

ST embeds documents only: `encode_query` would embed a query as a document (`{q}<emb>`). Queries
(`<query>{q}</query><thought>...<emb>`) go through transformers or `O1Embedder`; see the card.

Nothing is half-written: everything is built in a hidden sibling folder that is renamed to OUT at
the end (removed on any error or Ctrl-C, and on SIGTERM under the command). An OUT that exists and is not empty is
replaced only with --overwrite; otherwise the command stops with exit code 2 and touches nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import uuid
from typing import Any

from etils import epath

from o1_jax import cli

# The document suffix and the kwargs that make sentence-transformers' tokenizer append it.
EMB = "<emb>"
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
# Sample texts for the format checks (and the card's snippets).
_PROBE_QUERIES = ("where does the friend of kamo rizel live ?", "What is O1 Embedder, and why think first?")
_PROBE_DOCS = ("bane tosul lives in oslo , works as a baker and likes chess .", "Title. Some text, with 42 words.")
_LITERAL_SPECIAL_DOC = "a passage that spells <emb> and <query> as text"
# Placeholder for the folder in the card's snippets (the tests substitute it).
PATH_PLACEHOLDER = "path/to/this/folder"


# ----------------------------------------------------------------------------- checks before any work


def check_destination(workdir: str | os.PathLike, out: pathlib.Path, overwrite: bool) -> None:
    """Raises (touching nothing) when `out` may not be written."""
    if "://" not in os.fspath(workdir):  # a local `out` cannot contain a remote workdir
        w, o = pathlib.Path(workdir).resolve(), out.resolve()
        if o == w or o in w.parents:
            raise ValueError(f"{out}: is the workdir {workdir} or contains it; choose another --out")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder (expected a new or empty folder for the export)")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite / overwrite=True to replace it)")


def read_eval_results(workdir: epath.Path) -> list[tuple[str, dict]]:
    """[(file name, results)] from `workdir/eval/*.json` (written by o1_jax.evaluate / eval.at_end)."""
    found = []
    for path in sorted((workdir / "eval").glob("*.json")):
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected o1_jax evaluation results") from None
        modes = results.get("modes") if isinstance(results, dict) else None
        if not isinstance(modes, dict) or not all(isinstance(m, dict) for m in modes.values()):
            raise ValueError(f"{path}: no 'modes' mapping of mode -> metrics; expected o1_jax evaluation results")
        found.append((path.name, results))
    return found


def resolve_step(workdir: epath.Path, step: int | None) -> int | None:
    """The step to export: `step`, else the newest finished checkpoint (None when there is none)."""
    if step is not None:
        return int(step)
    folder = workdir / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=None)


# ----------------------------------------------------------------------------- tokenizers


def causal_lm_tokenizer(tokenizer):
    """The training tokenizer, left padded, padding with eos when it has no pad token (as o1_jax does),
    adding no BOS/EOS of its own (in place; returned)."""
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    probe = _PROBE_QUERIES[1]
    adds_tokens = tokenizer(probe)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]
    if adds_tokens and hasattr(tokenizer, "update_post_processor"):  # transformers 5 TokenizersBackend
        tokenizer.add_bos_token = False  # each setter rebuilds the post-processor as `$A`
        tokenizer.add_eos_token = False
    return tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_causal_lm_formats(tokenizer, formatter, source: str) -> None:
    """The card's transformers recipes (format strings + add_special_tokens=False) give o1_jax's ids."""
    eos = tokenizer.eos_token
    cases = []
    for q in _PROBE_QUERIES:  # probes within the length limits (o1_jax truncates longer pieces)
        n = len(_ids(tokenizer, q))
        if n <= formatter.max_query_tokens:
            cases.append((f"<query>{q}</query><thought>", formatter.prompt_ids(q)))
            cases.append((f"<query>{q}</query><thought>{EMB}", formatter.query_ids(q).ids))
            if n <= formatter.max_thought_tokens:
                cases.append((f"<query>{q}</query><thought>{q}{eos}{EMB}", formatter.query_ids(q, q).ids))
    cases += [(f"{d}{EMB}", formatter.doc_ids(d)) for d in _PROBE_DOCS
              if len(_ids(tokenizer, d)) <= formatter.max_doc_tokens]
    for text, expected in cases:
        got = _ids(tokenizer, text)
        if got != list(expected):
            raise ValueError(f"{source}: tokenizing {text!r} gives ids {got}, but o1_jax's format gives "
                             f"{list(expected)}; the exported tokenizer would not reproduce the training format")


def check_sentence_transformers_tokenizer(folder: pathlib.Path, formatter, max_seq_length: int, source: str) -> None:
    """Loads the tokenizer the way ST's Transformer module will and compares documents with o1_jax's."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder, **ST_PROCESSOR_KWARGS, model_max_length=max_seq_length)
    long_doc = " ".join(_PROBE_DOCS * (formatter.max_doc_tokens // 4 + 1))  # longer than max_doc_tokens
    docs = [*_PROBE_DOCS, _LITERAL_SPECIAL_DOC, long_doc, "x"]
    batch = tok(docs, padding=True, truncation="longest_first")  # what ST's preprocess calls
    for doc, ids, mask, expected in zip(docs, batch["input_ids"], batch["attention_mask"],
                                          [formatter.doc_ids(x) for x in docs]):
        got = [i for i, m in zip(ids, mask) if m]
        if got != list(expected) or mask[0] != 1:
            raise ValueError(f"{source}: sentence-transformers would tokenize the document {doc[:40]!r}... as {got}, "
                             f"but o1_jax's format `{{passage}}<emb>` gives {list(expected)}")


# ----------------------------------------------------------------------------- files


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_generation_config(folder: pathlib.Path, tokenizer, max_new_tokens: int) -> None:
    """Greedy, one thought of at most the training length, as `O1Embedder.think(k=1)`."""
    cfg = json.loads((folder / "config.json").read_text())
    _write_json(folder / "generation_config.json", {
        "bos_token_id": cfg.get("bos_token_id"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "max_new_tokens": int(max_new_tokens),
        "do_sample": False,
    })


def write_sentence_transformers(folder: pathlib.Path, hidden_size: int, max_seq_length: int) -> None:
    """modules.json, sentence_bert_config.json, config_sentence_transformers.json, pooling + normalize configs."""
    _write_json(folder / "modules.json", ST_MODULES)
    _write_json(folder / "sentence_bert_config.json", {
        "max_seq_length": int(max_seq_length),
        "do_lower_case": False,
        "transformer_task": "feature-extraction",
        "processor_kwargs": ST_PROCESSOR_KWARGS,
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    })
    versions = {"sentence_transformers": _version("sentence-transformers"), "transformers": _version("transformers"),
                "pytorch": _version("torch")}
    _write_json(folder / "config_sentence_transformers.json", {
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
    _write_json(folder / "1_Pooling" / "config.json",
                {"embedding_dimension": int(hidden_size), "pooling_mode": "lasttoken", "include_prompt": True})
    _write_json(folder / "2_Normalize" / "config.json",
                {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})


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


def write_model_card(folder: pathlib.Path, info: dict) -> None:
    """README.md: what this is, special tokens, exact formats, usage, evaluation, training config."""
    import yaml

    d, specials = info["data"], info["special_ids"]
    eos, pad = info["eos_token"], info["pad_token"]
    rows = "\n".join(f"| `{t}` | {i} | {role} |" for (t, i), role in zip(specials.items(), (
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


query = {info["sample_query"]!r}
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
docs = {info["sample_docs"]!r}
doc_emb = st.encode(docs)  # [N, {info["hidden_size"]}], L2-normalised
scores = query_emb @ doc_emb.T  # cosine similarities
'''
    untied_note = "" if info["tied"] else (
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

# O1 Embedder ({info["architecture"]}, step {info["step"]})

An O1 Embedder (Yan, Liu, Lian 2025, "O1 Embedder: Let Retrievers Think Before Action", arXiv:2502.07555)
trained with o1_jax (JAX/Flax) and exported by `python -m o1_jax.export` from the training
workdir `{info["workdir"]}`, checkpoint step {info["step"]}{" (LoRA adapters merged)" if info["lora"] else ""}.
The model first writes a *thought* about a query, then embeds the query with its thought at a final `<emb>`
token; documents are embedded at their own `<emb>`. An embedding is the final-layer hidden state (after
the last norm) at `<emb>`, L2-normalised, {info["hidden_size"]} dimensions; similarity is the inner product.

This folder is two models over the same weights:

* a `transformers` `{info["architecture"]}` (thinking; embedding any of the formats below), and
* a `sentence-transformers` model (Transformer -> last-token pooling -> Normalize) that embeds **documents**.
  Its tokenizer, configured by `processor_kwargs` in `sentence_bert_config.json`, appends `<emb>` to every
  text, pads on the right and truncates to {d["max_doc_tokens"]} text tokens + `<emb>`. It does not embed
  queries: `encode_query` would embed a query as a document; use the transformers recipe for queries.{untied_note}

## Special tokens

| token | id | role |
| --- | --- | --- |
{rows}
| `{eos}` (eos) | {info["eos_id"]} | ends a thought |
| `{pad}` (pad) | {info["pad_id"]} | padding |

## Formats

Exact token sequences. Each text piece is tokenised on its own with no special tokens (no BOS) and the
ids are concatenated; a special token's spelling inside a text is split as ordinary text; no spaces
are added around the special tokens. Text is stripped of surrounding whitespace first.

| what | sequence | text limits (tokens) |
| --- | --- | --- |
| thinking prompt | `<query>{{query}}</query><thought>` then generate up to `{eos}` | query <= {d["max_query_tokens"]}, thought <= {d["max_thought_tokens"]} |
| query with a thought | `<query>{{query}}</query><thought>{{thought}}{eos}<emb>` | as above |
| query, no thinking | `<query>{{query}}</query><thought><emb>` | query <= {d["max_query_tokens"]} |
| document | `{{title}} {{text}}<emb>` (a plain string: `{{text}}<emb>`) | <= {d["max_doc_tokens"]} |

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
was current when each file was written; the exported step is {info["step"]}):

{_eval_table(info["evals"])}

## Training configuration

`run_config.json` of the workdir (o1_jax `ml_collections` config; tokenizer size before the O1 tokens:
{info["original_vocab"]}):

```yaml
{yaml.safe_dump(info["config"], sort_keys=False, default_flow_style=False, width=100).rstrip()}
```
"""
    (folder / "README.md").write_text(card)


# ----------------------------------------------------------------------------- export


def _devices(saved: dict, source: pathlib.Path):
    """Devices for the run's own mesh: a fixed shape (no -1) takes its first devices; None means all."""
    import jax

    shape = saved.get("config", {}).get("mesh", {}).get("shape")
    if not shape or -1 in shape:
        return None
    needed, available = int(math.prod(shape)), jax.devices()
    if needed > len(available):
        raise ValueError(f"{source}: mesh.shape {tuple(shape)} needs {needed} devices, this host has "
                         f"{len(available)}; export where the run's mesh fits")
    return available[:needed]


def _publish(staging: pathlib.Path, out: pathlib.Path) -> None:
    """Renames the finished `staging` folder to `out`, replacing what is there."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; the export is meant to be shared
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None, overwrite: bool = False,
           max_shard_size: int | str = "5GB") -> pathlib.Path:
    """Writes the HF + sentence-transformers folder `out` from a training workdir's checkpoint; returns `out`.

    Raises FileExistsError (touching nothing) when `out` exists and is not empty and `overwrite` is False.
    """
    workdir, out = epath.Path(workdir), pathlib.Path(out)
    check_destination(workdir, out, overwrite)  # before anything slow
    run_config = workdir / "run_config.json"
    if not run_config.is_file():
        raise FileNotFoundError(f"{workdir}: no run_config.json "
                                "(expected the workdir of a `python -m o1_jax.train` run)")
    try:
        saved = json.loads(run_config.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_config}: not valid JSON ({e})") from None
    evals = read_eval_results(workdir)
    step = resolve_step(workdir, step)

    from o1_jax.data import formatting
    from o1_jax.hf import convert
    from o1_jax.training import workdir as workdir_lib

    restored = workdir_lib.restore_params(workdir, step, devices=_devices(saved, run_config))
    model, params, tokenizer, config = restored.model, restored.params, restored.tokenizer, restored.config
    d = config.data
    formatter = formatting.Formatter(tokenizer, d.max_query_tokens, d.max_thought_tokens, d.max_doc_tokens)
    tokenizer = causal_lm_tokenizer(tokenizer)
    check_causal_lm_formats(tokenizer, formatter, source=str(workdir / "tokenizer"))
    max_seq_length = d.max_doc_tokens + 1  # the text, then <emb>

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.export-{uuid.uuid4().hex[:8]}")
    try:
        convert.save_pretrained(model, params, staging, tokenizer=tokenizer, max_shard_size=max_shard_size)
        write_generation_config(staging, tokenizer, d.max_thought_tokens)
        write_sentence_transformers(staging, model.cfg.hidden_size, max_seq_length)
        check_sentence_transformers_tokenizer(staging, formatter, max_seq_length, source=str(workdir / "tokenizer"))
        hf_config = json.loads((staging / "config.json").read_text())
        write_model_card(staging, {
            "workdir": str(workdir), "step": step, "lora": bool(model.cfg.lora_rank),
            "architecture": hf_config["architectures"][0], "tied": bool(hf_config.get("tie_word_embeddings")),
            "hidden_size": model.cfg.hidden_size, "data": d.to_dict(), "special_ids": formatter.special,
            "eos_token": tokenizer.eos_token, "eos_id": formatter.eos_id,
            "pad_token": tokenizer.pad_token or tokenizer.eos_token, "pad_id": formatter.pad_id,
            "config": saved.get("config", {}), "original_vocab": saved.get("original_vocab"), "evals": evals,
            "sample_query": _PROBE_QUERIES[0], "sample_docs": list(_PROBE_DOCS),
        })
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- command line


def _parse(argv):
    p = cli.ArgumentParser(prog="python -m o1_jax.export", description=__doc__.split("\n\n")[1])
    p.add_argument("--workdir", required=True, help="the training workdir (python -m o1_jax.train --workdir)")
    p.add_argument("--out", required=True, help="the folder to write (a new or empty folder, or --overwrite)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)

    def stop(signum, frame):  # SIGTERM unwinds like Ctrl-C, so the staging folder is removed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return cli.run(_export, args)


def _export(args) -> None:
    cli.check_output(args.out, args.overwrite, folder=True)  # before the checkpoint is read
    out = export(args.workdir, args.out, step=args.step, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(f"exported {args.workdir} to {out}")


if __name__ == "__main__":
    sys.exit(main())

"""Encode and index a corpus, then search it from a file of queries.

  python -m o1_jax.index build  --model WORKDIR_OR_HF --corpus corpus.jsonl --out INDEX_DIR [--mode auto]
  python -m o1_jax.index search --model WORKDIR_OR_HF --index INDEX_DIR --queries queries.jsonl \\
      --out run.trec [--top_k 100] [--num_thoughts 3]

`corpus.jsonl`: BEIR lines `{"_id", "title", "text"}`. `queries.jsonl`: BEIR lines `{"_id", "text"}`.
The index records the model's parameter fingerprint; searching it with another model is an error.
The run is written in TREC format (`qid Q0 docid rank score o1_jax`).
An existing `--out` is refused before any work unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from o1_jax import cli
from o1_jax.data.beir import load_corpus, load_queries
from o1_jax.files import atomic_open
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.beir_eval import params_fingerprint
from o1_jax.retrieval.vector_index import Index


def _embedding_info(embedder: O1Embedder) -> dict:
    return {"model_fingerprint": params_fingerprint(embedder.params), "pooling": "last <emb> token, L2-normalised",
            "max_doc_tokens": embedder.formatter.max_doc_tokens}


def build(args) -> pathlib.Path:
    cli.check_output(args.out, args.overwrite, folder=True)  # before the corpus is encoded
    embedder = O1Embedder.from_pretrained(args.model, dtype=args.dtype)
    corpus = load_corpus(pathlib.Path(args.corpus))
    ids = list(corpus)
    t = time.perf_counter()
    embeddings = embedder.encode_corpus([corpus[i] for i in ids], batch_size=args.batch_size)
    print(f"encoded {len(ids)} documents in {time.perf_counter() - t:.1f} s")
    index = Index.build(embeddings, ids, mode=args.mode, embedding_info=_embedding_info(embedder))
    out = index.save(args.out, overwrite=True)  # the rule was checked above (an empty folder is replaced too)
    print(f"{index} -> {out}")
    return out


def search(args) -> pathlib.Path:
    cli.check_output(args.out, args.overwrite)  # before the queries are encoded
    embedder = O1Embedder.from_pretrained(args.model, dtype=args.dtype)
    info = _embedding_info(embedder)
    index = Index.load(args.index, expected_dim=embedder.model.cfg.hidden_size,
                       expected_info={"model_fingerprint": info["model_fingerprint"]})
    queries = load_queries(pathlib.Path(args.queries))
    qids = list(queries)
    vectors = embedder.encode_queries([queries[q] for q in qids], num_thoughts=args.num_thoughts, seed=args.seed)
    scores, doc_ids = index.search(vectors, args.top_k)
    out = pathlib.Path(args.out)
    with atomic_open(out) as f:  # a TREC run file
        for qid, row_ids, row_scores in zip(qids, doc_ids, scores):
            for rank, (doc, score) in enumerate(zip(row_ids, row_scores), start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} o1_jax\n")
    print(f"searched {len(qids)} queries (thoughts per query: {args.num_thoughts}) -> {out}")
    return out


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m o1_jax.index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="encode a corpus and save a ScaNN index")
    b.add_argument("--model", required=True, help="training workdir or HF folder")
    b.add_argument("--corpus", required=True, help="BEIR corpus.jsonl")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--mode", default="auto", choices=("auto", "exact", "scann"))
    b.add_argument("--batch_size", type=int, default=32)
    s = sub.add_parser("search", help="search an index with a file of queries, write a TREC run")
    s.add_argument("--model", required=True, help="the same model the index was built with")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    s.add_argument("--out", required=True, help="TREC run file to write")
    s.add_argument("--top_k", type=int, default=100)
    s.add_argument("--num_thoughts", type=int, default=0, help="0: no thinking")
    s.add_argument("--seed", type=int, default=0)
    for p in (b, s):
        p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    for key in ("batch_size", "top_k"):
        if getattr(args, key, 1) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if getattr(args, "num_thoughts", 0) < 0:
        parser.error(f"--num_thoughts must be >= 0 (0: no thinking), got {args.num_thoughts}")
    return cli.run(build if args.command == "build" else search, args)


if __name__ == "__main__":
    sys.exit(main())

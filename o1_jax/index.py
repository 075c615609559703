"""Encode and index a corpus (in resumable shards, over one or several processes), then search it.

  python -m o1_jax.index build  --model WORKDIR_OR_HF --corpus corpus.jsonl --out INDEX_DIR [--mode auto]
      [--shard_size 50000] [--shards SHARDS_DIR] [--keep_shards]
  python -m o1_jax.index build  --model M --corpus C --shards SHARDS_DIR --process_index I --process_count P
  python -m o1_jax.index merge  --shards SHARDS_DIR --out INDEX_DIR [--mode auto]
  python -m o1_jax.index search --model WORKDIR_OR_HF --index INDEX_DIR --queries queries.jsonl \\
      --out run.trec [--top_k 100] [--num_thoughts 3]

`corpus.jsonl`: BEIR lines `{"_id", "title", "text"}`. `queries.jsonl`: BEIR lines `{"_id", "text"}`.
`build` encodes the corpus in shards of `--shard_size` documents (shard s = documents
s*shard_size .. (s+1)*shard_size-1 in file order), each written to the shards folder (default:
`INDEX_DIR.shards` beside `--out`) as soon as it is encoded, so only one shard's embeddings are
in memory. A killed build rerun with the same arguments reuses every shard that verifies and
re-encodes the others; a rerun with another model, corpus or shard size is refused.
With `--process_count P` (P > 1), process `--process_index I` encodes the shards s with s % P == I
and stops; once every process has finished, `merge` checks the shards and builds the index. With
one process `build` merges itself, then deletes the shards folder (`--keep_shards` keeps it, so that
`merge --mode ...` can rebuild the index without encoding again).
The index records the model's parameter fingerprint; searching it with another model is an error.
The run is written in TREC format (`qid Q0 docid rank score o1_jax`).
An existing `--out` is refused before any work unless `--overwrite` is given (a shards folder from
an earlier run is resumed, not overwritten).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from o1_jax import cli
from o1_jax.data.beir import load_corpus, load_queries
from o1_jax.files import atomic_open
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval import shards
from o1_jax.retrieval.beir_eval import params_fingerprint
from o1_jax.retrieval.vector_index import Index


def _embedding_info(embedder: O1Embedder) -> dict:
    return {"model_fingerprint": params_fingerprint(embedder.params), "pooling": "last <emb> token, L2-normalised",
            "max_doc_tokens": embedder.formatter.max_doc_tokens}


def shards_folder(args) -> pathlib.Path:
    """--shards, else INDEX_DIR.shards beside --out."""
    if args.shards:
        return pathlib.Path(args.shards)
    out = pathlib.Path(args.out)
    return out.with_name(out.name + ".shards")


def build(args) -> pathlib.Path:
    folder = shards_folder(args)
    if args.out:
        cli.check_output(args.out, args.overwrite, folder=True)  # before the corpus is encoded
    cli.check_output(folder, folder=True, resumable=True)  # an earlier run's shards are resumed
    shards.check_shards_folder(folder)
    corpus = load_corpus(pathlib.Path(args.corpus))
    embedder = O1Embedder.from_pretrained(args.model, dtype=args.dtype)
    ids = list(corpus)
    shards.build_shards(folder, ids, [corpus[i] for i in ids],
                        lambda docs: embedder.encode_corpus(docs, batch_size=args.batch_size),
                        shard_size=args.shard_size, embedding_info=_embedding_info(embedder),
                        encode_options={"dtype": args.dtype}, corpus_path=str(pathlib.Path(args.corpus).resolve()),
                        process_index=args.process_index, process_count=args.process_count)
    if args.process_count > 1:
        out = f" --out {args.out}" if args.out else " --out INDEX_DIR"
        print(f"when all {args.process_count} processes have finished: python -m o1_jax.index merge "
              f"--shards {folder}{out}")
        return folder
    index = shards.merge_shards(folder, args.out, mode=args.mode, overwrite=True)  # --out was checked above
    print(f"{index} -> {args.out}")
    if not args.keep_shards:
        shards.remove_shards(folder)
    return pathlib.Path(args.out)


def merge(args) -> pathlib.Path:
    cli.check_output(args.out, args.overwrite, folder=True)  # before the shards are read
    index = shards.merge_shards(args.shards, args.out, mode=args.mode, overwrite=True)
    print(f"{index} -> {args.out}")
    return pathlib.Path(args.out)


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
    b = sub.add_parser("build", help="encode a corpus in shards and (with one process) save a ScaNN index")
    b.add_argument("--model", required=True, help="training workdir or HF folder")
    b.add_argument("--corpus", required=True, help="BEIR corpus.jsonl")
    b.add_argument("--out", help="index folder to write (optional with --process_count > 1 and --shards)")
    b.add_argument("--batch_size", type=int, default=32)
    b.add_argument("--shards", help="folder of embedding shards, resumed if it exists (default: OUT.shards)")
    b.add_argument("--shard_size", type=int, default=shards.DEFAULT_SHARD_SIZE, help="documents per shard")
    b.add_argument("--process_index", type=int, default=0, help="this process encodes shards s with s %% P == I")
    b.add_argument("--process_count", type=int, default=1, help="P; with P > 1 run `merge` after all of them")
    b.add_argument("--keep_shards", action="store_true", help="keep the shards folder after a 1-process build")
    m = sub.add_parser("merge", help="check the shards of a multi-process build and save their ScaNN index")
    m.add_argument("--shards", required=True, help="the shards folder the build processes wrote")
    m.add_argument("--out", required=True, help="index folder to write")
    s = sub.add_parser("search", help="search an index with a file of queries, write a TREC run")
    s.add_argument("--model", required=True, help="the same model the index was built with")
    s.add_argument("--index", required=True)
    s.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    s.add_argument("--out", required=True, help="TREC run file to write")
    s.add_argument("--top_k", type=int, default=100)
    s.add_argument("--num_thoughts", type=int, default=0, help="0: no thinking")
    s.add_argument("--seed", type=int, default=0)
    for p in (b, m):
        p.add_argument("--mode", default="auto", choices=("auto", "exact", "scann"))
    for p in (b, s):
        p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    for p in (b, m, s):
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    for key in ("batch_size", "top_k", "shard_size", "process_count"):
        if getattr(args, key, 1) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if getattr(args, "num_thoughts", 0) < 0:
        parser.error(f"--num_thoughts must be >= 0 (0: no thinking), got {args.num_thoughts}")
    if args.command == "build":
        if not 0 <= args.process_index < args.process_count:
            parser.error(f"--process_index must be in [0, {args.process_count - 1}] for --process_count "
                         f"{args.process_count}, got {args.process_index}")
        if not args.out and (args.process_count == 1 or not args.shards):
            parser.error("--out is required (the index folder; with --process_count > 1, --shards can name "
                         "the shards folder instead)")
    commands = {"build": build, "merge": merge, "search": search}
    return cli.run(commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())

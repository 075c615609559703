"""`python -m o1_jax.evaluate --config configs/eval_beir.py --config.data.path=../shared/data/scifact
--config.model.path=WORKDIR_OR_HF_FOLDER`

Encodes (or reuses a fingerprinted encoding of) the corpus, builds the index, retrieves top-k and
reports nDCG@10, MRR@10, Recall@100 and Recall@1000 for no-think and think(k), side by side;
writes the results as JSON (default: <model path>/eval/<folder name>-<split>.json) and prints a table.
"""

import json
import pathlib

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.evaluate import evaluate_beir, format_table
from o1_jax.trainer import is_remote, local_cache_for

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an evaluation config (configs/eval_beir.py).",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def run(config) -> dict:
    if not config.model.path or not config.data.path:
        raise ValueError("config.model.path and config.data.path must both be set "
                         "(a training workdir or HF folder, and a BEIR folder)")
    embedder = O1Embedder.from_pretrained(config.model.path, dtype=config.model.dtype,
                                          **({"batch_size": config.batch_size} if config.batch_size else {}))
    model_path = epath.Path(config.model.path)
    folder = pathlib.Path(config.data.path)
    cache = config.cache_dir or str(model_path / "eval" / "cache")
    if is_remote(cache):  # the corpus cache is memory-mapped: keep it on this machine
        cache = str(local_cache_for(cache, "eval"))
    results = evaluate_beir(embedder, folder, config.data.split, num_thoughts=config.num_thoughts,
                            modes=tuple(config.modes), top_k=config.top_k, index_mode=config.index_mode,
                            cache_dir=cache, max_queries=config.max_queries, seed=config.seed,
                            aggregate=config.aggregate)
    out = epath.Path(config.output or model_path / "eval" / f"{folder.name}-{config.data.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.rename(out)
    print(f"{folder.name} ({config.data.split}, {results['num_queries']} queries, {results['num_docs']} docs)")
    print(format_table(results))
    print(f"results: {out}")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)

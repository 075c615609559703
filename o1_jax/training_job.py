"""The `train` command's job: train (or resume), then evaluate retrieval at the end (`eval.at_end`).

The evaluation needs the embedder and the retrieval code, which sit above training, so the command
calls it, not the training library. No absl flags here: tests and scripts import it freely.
"""

from __future__ import annotations

import pathlib

import jax
from etils import epath

from o1_jax.files import atomic_write_json
from o1_jax.inference.embedder import O1Embedder
from o1_jax.retrieval.beir_eval import evaluate_beir, format_table
from o1_jax.training import trainable_params
from o1_jax.training.loop import TrainResult, train


def train_and_evaluate(config, workdir) -> tuple[TrainResult, dict | None]:
    """The job: `training.loop.train`, then, with `config.eval.at_end`, `evaluate_at_end` when it trained."""
    result = train(config, workdir)
    results = evaluate_at_end(result, epath.Path(workdir)) if config.eval.at_end and result.history else None
    return result, results


def evaluate_at_end(result: TrainResult, workdir: epath.Path) -> dict | None:
    """No-think vs think(k) retrieval on a BEIR folder with the parameters just trained, written to
    `workdir/eval/<folder>-<split>.json` (a run's own results: a rerun that trains further replaces them)."""
    run = result.run
    e, d = run.config.eval, run.config.data
    if jax.process_count() > 1:  # the parameters are spread over processes
        if jax.process_index() == 0:
            print("eval.at_end: skipped in a multi-process run; use python -m o1_jax.evaluate on the workdir")
        return None
    if not e.beir and not d.synthetic:
        print("eval.at_end: skipped, no BEIR folder (set --config.eval.beir=FOLDER)", flush=True)
        return None
    folder = pathlib.Path(e.beir) if e.beir else result.data_path.parent
    params = trainable_params.combine(result.state["params"], result.frozen, run.special_ids)
    embedder = O1Embedder(run.model, params, run.tokenizer, max_query_tokens=d.max_query_tokens,
                          max_thought_tokens=d.max_thought_tokens, max_doc_tokens=d.max_doc_tokens,
                          think_temperature=e.temperature, think_top_p=e.top_p,
                          query_instruction=d.get("query_instruction", ""))
    results = evaluate_beir(embedder, folder, e.split, num_thoughts=e.num_thoughts, max_queries=e.max_queries,
                            seed=run.config.seed)
    atomic_write_json(workdir / "eval" / f"{folder.name}-{e.split}.json", results)
    print(f"evaluation on {folder} ({e.split}, {results['num_queries']} queries):")
    print(format_table(results), flush=True)
    return results

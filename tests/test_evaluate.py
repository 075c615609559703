"""Evaluation: metrics against hand-computed values, the corpus cache, the CLI on a BEIR folder."""

import json
import math
import subprocess
import sys

import jax
import pytest

from o1_jax import hf
from o1_jax.data import synthetic
from o1_jax.inference.embedder import O1Embedder
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params
from o1_jax.retrieval.evaluate import evaluate_beir, ir_metrics


def test_metrics_match_hand_computation():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}, "q3": {"z": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "y": 1.0, "b": 0.5}, "q2": {"c": 1.0}}  # q3 retrieved nothing
    m = ir_metrics(run, qrels)
    dcg_q1 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg_q1 = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg_q1 / idcg_q1 + 1.0 + 0.0) / 3, rel=1e-6)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, rel=1e-6)
    assert m["recall@100"] == pytest.approx((1.0 + 1.0 + 0.0) / 3, rel=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    beir = synthetic.write_demo_data(root / "demo", seed=0, num_train=8, num_test=12)
    tokenizer = synthetic.make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    hf.save_pretrained(LlamaForCausalLM(cfg), init_params(cfg, jax.random.key(0)), root / "model", tokenizer=tokenizer)
    return beir, root / "model"


def test_corpus_cache_is_reused_only_for_the_same_model(setup, tmp_path):
    beir, model_dir = setup
    emb = O1Embedder.from_pretrained(model_dir, max_thought_tokens=4, batch_size=64)
    first = evaluate_beir(emb, beir, num_thoughts=1, cache_dir=tmp_path, max_queries=6)
    again = evaluate_beir(emb, beir, num_thoughts=1, cache_dir=tmp_path, max_queries=6)
    assert not first["corpus_cache_reused"] and again["corpus_cache_reused"]
    def metrics(r):
        return {mode: {k: v for k, v in m.items() if k != "query_encode_s"} for mode, m in r["modes"].items()}

    assert metrics(first) == metrics(again)
    assert set(first["modes"]) == {"no_think", "think(k=1)"}
    emb.params = jax.tree_util.tree_map(lambda x: x * 1.01, emb.params)  # another checkpoint
    other = evaluate_beir(emb, beir, num_thoughts=1, cache_dir=tmp_path, max_queries=6, modes=("no_think",))
    assert not other["corpus_cache_reused"]


def test_evaluate_cli_writes_results(setup, tmp_path):
    beir, model_dir = setup
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "o1_jax.evaluate", "--config", "configs/eval_beir.py",
           f"--config.data.path={beir}", f"--config.model.path={model_dir}", "--config.num_thoughts=1",
           "--config.max_queries=4", f"--config.output={out}", f"--config.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["num_queries"] == 4 and "| no_think |" in proc.stdout
    assert 0.0 <= results["modes"]["think(k=1)"]["recall@1000"] <= 1.0


def test_scifact_qrels_load_for_evaluation(shared_data):
    from o1_jax.data.prepare import load_beir

    corpus, queries, qrels = load_beir(shared_data / "scifact", "test")
    assert len(corpus) == 5183 and len(qrels) == 300
    assert all(q in queries for q in qrels)


def test_index_build_and_search_commands(setup, tmp_path):
    from o1_jax import index as index_cli

    beir, model_dir = setup
    assert index_cli.main(["build", "--model", str(model_dir), "--corpus", str(beir / "corpus.jsonl"),
                           "--out", str(tmp_path / "idx")]) == 0
    assert index_cli.main(["search", "--model", str(model_dir), "--index", str(tmp_path / "idx"),
                           "--queries", str(beir / "queries.jsonl"), "--out", str(tmp_path / "run.trec"),
                           "--top-k", "5"]) == 0
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 12 * 5 and lines[0].split()[1:4:2] == ["Q0", "1"]
    # The same index searched with another model's weights is refused.
    other = tmp_path / "other"
    emb = O1Embedder.from_pretrained(model_dir)
    hf.save_pretrained(emb.model, jax.tree_util.tree_map(lambda x: x * 1.01, emb.params), other, tokenizer=emb.tokenizer)
    code = index_cli.main(["search", "--model", str(other), "--index", str(tmp_path / "idx"),
                           "--queries", str(beir / "queries.jsonl"), "--out", str(tmp_path / "r2.trec")])
    assert code == 2 and not (tmp_path / "r2.trec").exists()

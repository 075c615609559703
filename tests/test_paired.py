"""Paired comparison (o1_jax.retrieval.paired, `python -m o1_jax.evaluate compare`) on constructed
inputs whose answers are known."""

import json
import pathlib
import subprocess
import sys

import pytest

from o1_jax.retrieval import paired

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _per_query(values):
    return {f"q{i}": {"ndcg@10": v} for i, v in enumerate(values)}


def test_a_constant_improvement_is_exact_and_significant():
    a = _per_query([0.1 * (i % 7) for i in range(30)])
    b = {q: {"ndcg@10": m["ndcg@10"] + 0.1} for q, m in a.items()}
    r = paired.compare(a, b, ["ndcg@10"], resamples=2000)["ndcg@10"]
    assert r["diff"] == pytest.approx(0.1) and r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
    # every sign flip but none and all shrinks |mean|: P(all 30 equal signs) = 2**-29
    assert r["p_value"] == pytest.approx(1 / 2001, abs=1 / 2001) and r["n"] == 30


def test_identical_and_symmetric_differences_are_not_significant():
    a = _per_query([0.2, 0.4, 0.6, 0.8])
    assert paired.compare(a, a, ["ndcg@10"])["ndcg@10"]["p_value"] == 1.0
    b = _per_query([0.3, 0.3, 0.7, 0.7])  # differences +0.1, -0.1, +0.1, -0.1: mean 0
    r = paired.compare(a, b, ["ndcg@10"])["ndcg@10"]
    assert r["diff"] == pytest.approx(0.0, abs=1e-12) and r["p_value"] == 1.0


def test_the_randomisation_p_value_and_bootstrap_interval_match_their_exact_distributions():
    """Three equal differences: |mean| keeps its size only when the three flipped signs agree
    (probability 1/4). Two differences {0, 1}: a resampled mean is 0, 1/2 or 1 with probabilities
    1/4, 1/2, 1/4, so its 2.5th and 97.5th percentiles are 0 and 1."""
    a = _per_query([0.0, 0.0, 0.0])
    r = paired.compare(a, _per_query([1.0, 1.0, 1.0]), ["ndcg@10"], resamples=20_000)["ndcg@10"]
    assert r["p_value"] == pytest.approx(0.25, abs=0.015)  # 5 binomial standard deviations (seeded)
    r = paired.compare(_per_query([0.0, 0.0]), _per_query([0.0, 1.0]), ["ndcg@10"])["ndcg@10"]
    assert (r["ci_low"], r["diff"], r["ci_high"]) == (0.0, 0.5, 1.0)


def test_only_common_queries_count_and_none_is_an_error():
    a, b = _per_query([0.0, 0.5]), {"q1": {"ndcg@10": 1.0}, "other": {"ndcg@10": 0.0}}
    assert paired.compare(a, b, ["ndcg@10"])["ndcg@10"]["n"] == 1
    with pytest.raises(ValueError, match="no query in common"):
        paired.compare(a, {"x": {"ndcg@10": 1.0}}, ["ndcg@10"])


def _results(path, modes):
    metrics = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
    path.write_text(json.dumps({"modes": {
        mode: {"per_query": {q: {m: v for m in metrics} for q, v in values.items()}} for mode, values in modes.items()}}))
    return path


def test_compare_command_prints_the_table_and_refuses_bad_input_in_one_line(tmp_path):
    base = {f"q{i}": 0.1 * (i % 5) for i in range(40)}
    a = _results(tmp_path / "a.json", {"no_think": base, "think(k=3)": {q: v + 0.2 for q, v in base.items()}})
    cmd = [sys.executable, "-m", "o1_jax.evaluate", "compare"]
    out = subprocess.run(cmd + [f"{a}:no_think", f"{a}:think(k=3)", "--json", str(tmp_path / "c.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| ndcg@10 | 0.2000 | 0.4000 | +0.2000 | [+0.2000, +0.2000] | 0.0001 * |" in out.stdout
    assert json.loads((tmp_path / "c.json").read_text())["metrics"]["mrr@10"]["diff"] == pytest.approx(0.2)
    for args, message in (([str(a), f"{a}:no_think"], "has modes ['no_think', 'think(k=3)']: name one"),
                          ([f"{a}:think", f"{a}:no_think"], "no mode 'think'"),
                          ([str(tmp_path / "missing.json"), str(a)], "no such evaluation file")):
        bad = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    (tmp_path / "old.json").write_text(json.dumps({"modes": {"bm25": {"ndcg@10": 0.3}}}))
    old = subprocess.run(cmd + [str(tmp_path / "old.json"), f"{a}:no_think"], cwd=ROOT, capture_output=True, text=True)
    assert old.returncode == 2 and "has no per_query metrics" in old.stderr

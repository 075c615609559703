"""benchmarks/repro_table.py: the reproduction's tables from evaluate's JSON files, and a clear error for a missing one."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _table_module():
    spec = importlib.util.spec_from_file_location("repro_table", ROOT / "benchmarks" / "repro_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(x):
    return {"ndcg@10": x, "mrr@10": x + 0.01, "recall@100": x + 0.02, "recall@1000": x + 0.03}


def _write_results(folder, skip=None):
    folder.mkdir(parents=True, exist_ok=True)
    for s, base in (("scifact", 0.1), ("nfcorpus", 0.5)):
        files = {
            "bm25": {"modes": {"bm25": _metrics(base)}},
            "minilm": {"modes": {"dense": _metrics(base + 0.01)}, "corpus_encode_s": 7.0, "num_docs": 10},
            "untrained": {"modes": {"no_think": _metrics(base + 0.02)}},
            "nothink": {"modes": {"no_think": _metrics(base + 0.03)}},
            "o1": {"index_mode": "exact", "num_queries": 3, "num_docs": 10, "corpus_encode_s": 12.0,
                   "scann_params": {"num_leaves": 4, "num_leaves_to_search": 2, "reorder": 10},
                   "modes": {m: {**_metrics(base + d), "query_encode_s": 1.0,
                                 "scann": {**_metrics(base + d - 0.001), "recall@10_vs_exact": 0.9}}
                             for m, d in (("no_think", 0.04), ("think(k=1)", 0.05), ("think(k=3)", 0.06))}},
        }
        for name, r in files.items():
            if (s, name) != skip:
                (folder / f"{s}-{name}.json").write_text(json.dumps(r))


def test_tables(tmp_path, capsys):
    table = _table_module()
    _write_results(tmp_path / "results")
    (tmp_path / "timings.tsv").write_text(f"{tmp_path}/o1.done\t1234\n")
    assert table.main(["--results", str(tmp_path / "results"), "--timings", str(tmp_path / "timings.tsv"),
                       "--out", str(tmp_path / "table.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "table.md").read_text() == text
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    assert rows["BM25 (bm25s, English stopwords)"][:4] == ["0.1000", "0.1100", "0.1200", "0.5000"]
    assert rows["O1 SmolLM2, thinking, k = 3 (sampled, averaged)"][0] == "0.1600"
    assert rows["NFCorpus"] == ["think(k=3)", "0.5600", "0.5590", "0.9000", "leaves 2/4, reorder 10 |"]
    assert rows["o1.done"] == ["1,234 |"]


def test_missing_result_is_named(tmp_path, capsys):
    _write_results(tmp_path / "results", skip=("nfcorpus", "minilm"))
    assert _table_module().main(["--results", str(tmp_path / "results")]) == 2
    assert "nfcorpus-minilm.json: missing" in capsys.readouterr().err


def test_partial_run_marks_missing_rows_not_run(tmp_path, capsys):
    """--partial: a missing row's cells read "not run", its paired tests are left out; without it, an error."""
    table = _table_module()
    _write_results(tmp_path / "results", skip=("nfcorpus", "nothink"))
    (tmp_path / "results" / "scifact-nothink.json").unlink()
    assert table.main(["--results", str(tmp_path / "results")]) == 2
    capsys.readouterr()
    assert table.main(["--results", str(tmp_path / "results"), "--partial"]) == 0
    lines = capsys.readouterr().out.splitlines()
    twin = [line for line in lines if line.startswith("| SmolLM2, contrastive only")]
    assert twin == ["| SmolLM2, contrastive only (no thoughts, no generation loss) | " + " | ".join(["not run"] * 6) + " |"]
    assert any(line.startswith("| BM25 (bm25s, English stopwords) | 0.1000 |") for line in lines)


def test_controls_and_paired_tests_appear_when_their_results_exist(tmp_path, capsys):
    from o1_jax.retrieval import paired

    table = _table_module()
    _write_results(tmp_path / "results")
    per_query = {"no_think": {"q1": 0.2, "q2": 0.4, "q3": 0.0}, "placebo(thought=query)": {"q1": 0.3, "q2": 0.4, "q3": 0.1},
                 "given_thoughts(scifact_test_thoughts)": {"q1": 0.9, "q2": 0.8, "q3": 0.7},
                 "shuffled_thoughts(scifact_test_thoughts)": {"q1": 0.1, "q2": 0.5, "q3": 0.2}}
    for s in ("scifact", "nfcorpus"):
        path = tmp_path / "results" / f"{s}-o1.json"
        r = json.loads(path.read_text())
        for mode, values in per_query.items():
            r["modes"].setdefault(mode, _metrics(0.3))["per_query"] = {q: {"ndcg@10": v} for q, v in values.items()}
        path.write_text(json.dumps(r))
    assert table.main(["--results", str(tmp_path / "results")]) == 0
    text = capsys.readouterr().out
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| O1 SmolLM2, placebo thought: the query")]
    assert len(rows) == 3  # its metrics row, then one paired row per set
    paired_rows = [line for line in text.splitlines() if line.startswith("| O1 SmolLM2, the expert's")]
    want = paired.compare({q: {"ndcg@10": v} for q, v in per_query["no_think"].items()},
                          {q: {"ndcg@10": v} for q, v in per_query["given_thoughts(scifact_test_thoughts)"].items()},
                          ["ndcg@10"])["ndcg@10"]
    assert f"| SciFact | {want['diff']:+.4f} | [{want['ci_low']:+.4f}, {want['ci_high']:+.4f}] | {want['p_value']:.4f}" \
        in paired_rows[1]
    assert "seed 1" not in text  # no seed-1 results: no seed-1 rows
    assert len([line for line in text.splitlines() if line.startswith("| O1 SmolLM2, placebo thought: another")]) == 3
    # The further pairs: the expert's thoughts against the shuffled ones, per set.
    right_wrong = [line for line in text.splitlines() if line.startswith("| the expert's thoughts, right query")]
    want = paired.compare({q: {"ndcg@10": v} for q, v in per_query["shuffled_thoughts(scifact_test_thoughts)"].items()},
                          {q: {"ndcg@10": v} for q, v in per_query["given_thoughts(scifact_test_thoughts)"].items()},
                          ["ndcg@10"])["ndcg@10"]
    assert len(right_wrong) == 2 and f"| NFCorpus | {want['diff']:+.4f} |" in right_wrong[1]


def test_a_second_seed_is_paired_with_the_first(tmp_path, capsys):
    """With seed-1 twin results, the table tests the twin's seed 1 against its seed 0, per set."""
    from o1_jax.retrieval import paired

    table = _table_module()
    _write_results(tmp_path / "results")
    seeds = {"nothink": {"q1": 0.5, "q2": 0.1, "q3": 0.3}, "nothink_seed1": {"q1": 0.4, "q2": 0.3, "q3": 0.6}}
    for s in ("scifact", "nfcorpus"):
        for name, values in seeds.items():
            r = {"modes": {"no_think": {**_metrics(0.3), "per_query": {q: {"ndcg@10": v} for q, v in values.items()}}}}
            (tmp_path / "results" / f"{s}-{name}.json").write_text(json.dumps(r))
    assert table.main(["--results", str(tmp_path / "results")]) == 0
    lines = capsys.readouterr().out.splitlines()
    pair = [line for line in lines if line.startswith("| the contrastive twin, seed 1 against seed 0")]
    want = paired.compare(*({q: {"ndcg@10": v} for q, v in seeds[k].items()} for k in ("nothink", "nothink_seed1")),
                          ["ndcg@10"])["ndcg@10"]
    assert len(pair) == 2 and f"| SciFact | {want['diff']:+.4f} |" in pair[0] and "| NFCorpus |" in pair[1]
    assert any(line.startswith("| SmolLM2, contrastive only, seed 1 | 0.3000 |") for line in lines)
    assert not any(line.startswith("| O1 without thinking, seed 1") for line in lines)  # no O1 seed 1 here

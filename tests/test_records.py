"""O1 record files: normalisation, validation messages, atomic writing."""

import json
import re

import pytest

from o1_jax.data.records import RecordError, doc_text, normalize_doc, read_records, write_records

GOOD = {"query": "what is rope?", "pos": ["rotary embeddings"], "neg": ["a hemp cord"]}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_normalize_doc_and_doc_text():
    assert normalize_doc("plain") == {"title": "", "text": "plain"}
    assert normalize_doc({"text": "body"}) == {"title": "", "text": "body"}
    assert normalize_doc({"title": "T", "text": "body", "_id": "7"}) == {"title": "T", "text": "body", "id": "7"}
    assert doc_text({"title": "Title", "text": "body "}) == "Title body"
    assert doc_text({"title": "", "text": " body"}) == "body"
    assert doc_text("just text") == "just text"
    with pytest.raises(RecordError, match="must be a string or a"):
        normalize_doc({"title": "no text"})
    with pytest.raises(RecordError, match="must be a string or a"):
        normalize_doc(3)


def test_read_normalises_and_keeps_extra_keys(tmp_path):
    path = _write_lines(tmp_path / "r.jsonl", [
        json.dumps(GOOD),
        "",
        json.dumps({
            "id": 42, "query": "q2", "pos": [{"title": "Tï", "text": "✓ body"}], "thought": "think",
            "all_thought": ["a", "think"], "pos_scores": [1], "neg": ["n1", "n2"], "neg_scores": [0.5, 0.25],
            "prompt": "kept",
        }, ensure_ascii=False),
    ])
    a, b = read_records(path)
    assert a["id"] == "1" and a["thought"] == "" and a["all_thought"] == []
    assert a["pos"] == [{"title": "", "text": "rotary embeddings"}]
    assert a["neg"] == [{"title": "", "text": "a hemp cord"}]
    assert a["pos_scores"] is None and a["neg_scores"] is None
    assert b["id"] == "42" and b["thought"] == "think" and b["all_thought"] == ["a", "think"]
    assert b["pos"] == [{"title": "Tï", "text": "✓ body"}]
    assert b["pos_scores"] == [1.0] and isinstance(b["pos_scores"][0], float)
    assert b["neg_scores"] == [0.5, 0.25]
    assert b["prompt"] == "kept"


def test_missing_neg_is_empty(tmp_path):
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps({"query": "q", "pos": ["p"]})])
    assert read_records(path)[0]["neg"] == []


def test_round_trip(tmp_path):
    src = _write_lines(tmp_path / "in.jsonl", [
        json.dumps(GOOD),
        json.dumps({"query": "ünï", "pos": [{"title": "t", "text": "x"}], "neg": [], "thought": "t",
                    "pos_scores": [0.3], "neg_scores": []}, ensure_ascii=False),
    ])
    records = read_records(src)
    out = tmp_path / "sub" / "out.jsonl"
    assert write_records(records, out) == 2
    assert read_records(out) == records
    assert "ünï" in out.read_text(encoding="utf-8")  # UTF-8, not \u escapes


BAD_LINES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"pos": ["p"]}), "'query' must be a non-empty string, it is missing"),
    (json.dumps({"query": "  ", "pos": ["p"]}), "'query' must be a non-empty string"),
    (json.dumps({"query": 5, "pos": ["p"]}), "'query' must be a non-empty string, got 5"),
    (json.dumps({"query": "q"}), "'pos' must be a non-empty list of documents, it is missing"),
    (json.dumps({"query": "q", "pos": []}), "'pos' must be a non-empty list"),
    (json.dumps({"query": "q", "pos": "p"}), "'pos' must be a non-empty list"),
    (json.dumps({"query": "q", "pos": ["p"], "neg": "n"}), "'neg' must be a list"),
    (json.dumps({"query": "q", "pos": ["p", 3]}), "pos[1] must be a string or a"),
    (json.dumps({"query": "q", "pos": ["p"], "neg": [{"title": "t"}]}), "neg[0] must be a string or a"),
    (json.dumps({"query": "q", "pos": ["p"], "thought": ["x"]}), "'thought' must be a string"),
    (json.dumps({"query": "q", "pos": ["p"], "all_thought": "x"}), "'all_thought' must be a list of strings"),
    (json.dumps({"query": "q", "pos": ["p"], "id": 1.5}), "'id' must be a string or an integer"),
    (json.dumps({"query": "q", "pos": ["p"], "pos_scores": [1, 2]}), "'pos_scores' has 2 scores but 'pos' has 1"),
    (json.dumps({"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": []}), "'neg_scores' has 0 scores"),
    (json.dumps({"query": "q", "pos": ["p"], "pos_scores": ["high"]}), "'pos_scores' must be a list of finite numbers"),
    ('{"query": "q", "pos": ["p"], "pos_scores": [NaN]}', "'pos_scores' must be a list of finite numbers"),
    (json.dumps({"query": "q", "pos": ["p"], "id": "1"}), "duplicate id '1'"),
]


@pytest.mark.parametrize("line,expected", BAD_LINES, ids=[e for _, e in BAD_LINES])
def test_bad_line_names_file_and_line(tmp_path, line, expected):
    # Line 1 good, line 2 blank, line 3 bad: the message must point at line 3.
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", line, json.dumps(GOOD)])
    with pytest.raises(RecordError) as err:
        read_records(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert expected in msg
    assert msg.endswith(".") and "\n" not in msg


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError) as err:
        read_records(path)
    assert str(err.value) == f"{path}: no records (expected one JSON object per line)."


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: no such file"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(RecordError, match="is a folder"):
        read_records(tmp_path)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"query": "\xff"}\n')
    with pytest.raises(RecordError, match="^" + re.escape(f"{path}:2: not valid UTF-8")):
        read_records(path)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    out = tmp_path / "out.jsonl"
    write_records([GOOD], out)
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_records([GOOD, {"query": "q", "pos": {"a set"}}], out)  # a set is not JSON
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_shared_toy_training_files(shared_data):
    files = sorted((shared_data / "msmarco_toy_train").glob("*.jsonl"))
    assert len(files) == 3
    records = [r for f in files for r in read_records(f)]
    assert len(records) == 31
    for r in records:
        assert r["pos"] and len(r["neg"]) >= 25
        assert len(r["pos_scores"]) == len(r["pos"]) and len(r["neg_scores"]) == len(r["neg"])

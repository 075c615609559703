"""BEIR folders: `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`, read with one clear
sentence (file:line) for anything malformed."""

from __future__ import annotations

import os
import pathlib

from o1_jax.data.records import RecordError, iter_json_lines

QRELS_HEADER = ("query-id", "corpus-id", "score")


def _id(value, where: str, key: str = "_id") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(f"{where}: '{key}' must be a non-empty string or integer, got {value!r}.")
    return str(value)


def _str_field(obj: dict, key: str, where: str, required: bool) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' must be a string, got {value!r:.60}.")
    return value


def _read_jsonl_objects(path: pathlib.Path):
    if not path.is_file():
        raise RecordError(f"{path}: no such file (expected a BEIR JSONL file).")
    for lineno, obj in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
        yield where, obj


def load_corpus(path: pathlib.Path) -> dict[str, dict]:
    corpus: dict[str, dict] = {}
    for where, obj in _read_jsonl_objects(path):
        did = _id(obj.get("_id"), where)
        if did in corpus:
            raise RecordError(f"{where}: duplicate document id {did!r} (ids must be unique).")
        corpus[did] = {
            "title": _str_field(obj, "title", where, required=False),
            "text": _str_field(obj, "text", where, required=True),
        }
    if not corpus:
        raise RecordError(f"{path}: no documents (expected one JSON object per line).")
    return corpus


def load_queries(path: pathlib.Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for where, obj in _read_jsonl_objects(path):
        qid = _id(obj.get("_id"), where)
        if qid in queries:
            raise RecordError(f"{where}: duplicate query id {qid!r} (ids must be unique).")
        queries[qid] = _str_field(obj, "text", where, required=True)
    if not queries:
        raise RecordError(f"{path}: no queries (expected one JSON object per line).")
    return queries


def load_qrels(path: pathlib.Path, corpus: dict, queries: dict) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise RecordError(f"{path}: no such file (expected a qrels TSV with header 'query-id<TAB>corpus-id<TAB>score').")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            fields = tuple(line.rstrip("\r\n").split("\t"))
            if lineno == 1:
                if fields != QRELS_HEADER:
                    raise RecordError(
                        f"{where}: expected the header 'query-id<TAB>corpus-id<TAB>score', got {line.rstrip()!r}."
                    )
                continue
            if not line.strip():
                continue
            if len(fields) != 3:
                raise RecordError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}.")
            qid, did, score = fields
            if qid not in queries:
                raise RecordError(f"{where}: query id {qid!r} is not in queries.jsonl.")
            if did not in corpus:
                raise RecordError(f"{where}: corpus id {did!r} is not in corpus.jsonl.")
            try:
                qrels.setdefault(qid, {})[did] = int(score)
            except ValueError:
                raise RecordError(f"{where}: score must be an integer, got {score!r}.") from None
    if not qrels:
        raise RecordError(f"{path}: no judgements (expected lines 'query-id<TAB>corpus-id<TAB>score' after the header).")
    return qrels


def load_beir(folder: str | os.PathLike, split: str):
    """(corpus: id -> {title, text}, queries: id -> text, qrels: query id -> {doc id -> score}) of a BEIR folder."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/).")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv", corpus, queries)
    return corpus, queries, qrels

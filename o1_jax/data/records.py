"""O1 training records: read, validate and write the JSONL format.

One JSON object per line:
  {"query": str, "pos": [doc, ...], "neg": [doc, ...], "thought": str,
   "all_thought": [str, ...], "pos_scores": [float], "neg_scores": [float],
   "id": str | int, ...}
`thought`, `neg`, `all_thought`, the scores and `id` are optional; other keys
are kept as they are. A doc is a string or a {"title": str, "text": str} object, optionally with
its corpus "id" (or BEIR's "_id"), which training uses to find a query's positives elsewhere in
the batch (`formatting.doc_key`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Iterable, Iterator

from o1_jax.files import atomic_open

# Keys read_records gives every record; anything else in a line is passed through.
KNOWN_KEYS = ("id", "query", "pos", "neg", "thought", "all_thought", "pos_scores", "neg_scores")


class RecordError(ValueError):
    """A record file or a record that does not follow the O1 format."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _normalize_doc(doc: Any, where: str) -> dict:
    if isinstance(doc, str):
        return {"title": "", "text": doc}
    if isinstance(doc, dict):
        title = doc.get("title", "")
        text = doc.get("text")
        if title is None:
            title = ""
        if isinstance(text, str) and isinstance(title, str):
            out = {"title": title, "text": text}
            doc_id = doc.get("id", doc.get("_id"))  # BEIR's corpus spells it _id
            if isinstance(doc_id, (str, int)) and not isinstance(doc_id, bool):
                out["id"] = str(doc_id)
            return out
    raise RecordError(
        f"{where} must be a string or a {{\"title\": str, \"text\": str}} object, got {_short(doc)}."
    )


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_doc(doc: Any) -> dict:
    """A document as {"title": str, "text": str} (title "" when absent)."""
    return _normalize_doc(doc, "a document")


def doc_key(doc: Any) -> str:
    """What identifies a document across records: its corpus id when it has one, else its text."""
    if isinstance(doc, dict) and doc.get("id", doc.get("_id")) is not None:
        return "id:" + str(doc.get("id", doc.get("_id")))
    return "text:" + doc_text(doc)


def doc_text(doc: Any) -> str:
    """The string the model sees for a document: `title + " " + text`, stripped (BEIR's convention);
    a missing or null title or text counts as empty, a string is the document itself."""
    if isinstance(doc, str):
        return doc.strip()
    if isinstance(doc, dict):
        return (str(doc.get("title") or "") + " " + str(doc.get("text") or "")).strip()
    raise RecordError(f"a document must be a string or a {{\"title\": str, \"text\": str}} object, got {_short(doc)}.")


def _scores(value: Any, n: int, key: str, docs_key: str, where: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value
    ):
        raise RecordError(f"{where}: '{key}' must be a list of finite numbers, got {_short(value)}.")
    if len(value) != n:
        raise RecordError(
            f"{where}: '{key}' has {len(value)} scores but '{docs_key}' has {n} documents (expected one score per document)."
        )
    return [float(x) for x in value]


def validate_record(obj: Any, where: str, default_id: str) -> dict:
    """One parsed JSON line as a normalised record; `where` ("file:line") prefixes any error."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {_type_name(obj)}.")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        got = "it is missing" if "query" not in obj else f"got {_short(query)}"
        raise RecordError(f"{where}: 'query' must be a non-empty string, {got}.")
    pos = obj.get("pos")
    if not isinstance(pos, list) or not pos:
        got = "it is missing" if "pos" not in obj else f"got {_short(pos)}"
        raise RecordError(f"{where}: 'pos' must be a non-empty list of documents, {got}.")
    neg = obj.get("neg")
    if neg is None:
        neg = []
    if not isinstance(neg, list):
        raise RecordError(f"{where}: 'neg' must be a list of documents, got {_short(neg)}.")
    pos = [_normalize_doc(d, f"{where}: pos[{i}]") for i, d in enumerate(pos)]
    neg = [_normalize_doc(d, f"{where}: neg[{i}]") for i, d in enumerate(neg)]
    thought = obj.get("thought")
    if thought is None:
        thought = ""
    if not isinstance(thought, str):
        raise RecordError(f"{where}: 'thought' must be a string, got {_short(thought)}.")
    all_thought = obj.get("all_thought")
    if all_thought is None:
        all_thought = []
    if not isinstance(all_thought, list) or not all(isinstance(t, str) for t in all_thought):
        raise RecordError(f"{where}: 'all_thought' must be a list of strings, got {_short(all_thought)}.")
    rid = obj.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RecordError(f"{where}: 'id' must be a string or an integer, got {_short(rid)}.")
    record = {k: v for k, v in obj.items() if k not in KNOWN_KEYS}
    record.update(
        id=str(rid),
        query=query,
        pos=pos,
        neg=neg,
        thought=thought,
        all_thought=list(all_thought),
        pos_scores=_scores(obj.get("pos_scores"), len(pos), "pos_scores", "pos", where),
        neg_scores=_scores(obj.get("neg_scores"), len(neg), "neg_scores", "neg", where),
    )
    return record


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line; errors name the file and line."""
    path = pathlib.Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file (expected a JSONL file, one JSON object per line).") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a folder (expected a JSONL file, one JSON object per line).") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1}).") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}).") from None


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of an O1 JSONL file, validated and normalised (all lines are checked before returning)."""
    records, seen = [], {}
    for lineno, obj in iter_json_lines(path):
        record = validate_record(obj, f"{path}:{lineno}", default_id=str(lineno))
        if record["id"] in seen:
            raise RecordError(
                f"{path}:{lineno}: duplicate id {record['id']!r} (first used on line {seen[record['id']]}; ids must be unique)."
            )
        seen[record["id"]] = lineno
        records.append(record)
    if not records:
        raise RecordError(f"{path}: no records (expected one JSON object per line).")
    return records


def write_records(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write records as JSONL (UTF-8, one object per line) atomically; returns how many were written."""
    n = 0
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n

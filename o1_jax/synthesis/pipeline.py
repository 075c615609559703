"""Synthesis: O1 records in, the same records with committee-chosen thoughts out; resumable.

    summary = run(config)                      # python -m o1_jax.synthesize --config ...
    summary = synthesize(inputs, expert, members, output=..., num_candidates=3, seed=0)

Records are processed in input order, `chunk_size` at a time: the expert proposes
`num_candidates` thoughts per record, every committee member scores them, the vote picks one, and
each finished record is appended to the output as one `write` of a whole line, then fsync'd.
On restart a trailing partial line (a kill mid-write) is cut off, the ids already written are
skipped, and the run goes on; an output holding an id the input does not have is refused (it
belongs to another input). Each output line is the input line's JSON object with `id` (the
input's, or its line number), `all_thought`, `thought` and `committee` added:

    "committee": {"rule": "soft", "chosen": 1, "weights": {"bm25": 1.0, ...},
                  "scores": {"bm25": [rr_0, .., rr_n-1], ...},   # reciprocal rank of the best positive
                  "picks": {"bm25": 0, ...}}                     # each member's own best candidate

Few-shot examples are drawn from (seed, record id, candidate), so a resumed run builds the same
prompts as an uninterrupted one; a chunk's sampling seed comes from (seed, the chunk's record ids),
so its samples are the same too unless the kill split a chunk.

The expert is `LlamaExpert` (config.expert.kind "local") or `OpenAIExpert` ("openai": any
OpenAI-compatible server, e.g. `python -m o1_jax.serve`). When the expert fails for good
(`ExpertError`: its server stayed down through the retries, or refused a request), the run stops:
the records before the failing chunk stay written, none of that chunk is, the summary file says
`incomplete` (the error and the records left), and the error names the chunk's records; rerunning
the same command resumes there.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Sequence

import ml_collections
import numpy as np

from o1_jax.data.beir import load_corpus
from o1_jax.data.records import RecordError, doc_text, iter_json_lines, validate_record
from o1_jax.retrieval.bm25 import BM25
from o1_jax.files import atomic_open
from o1_jax.metrics import ProgressBar
from o1_jax.synthesis import committee as committee_lib
from o1_jax.synthesis import degenerate
from o1_jax.synthesis.expert import Expert, ExpertError, FewShotPool, GenerationSettings, LlamaExpert, stable_hash
from o1_jax.synthesis.openai_expert import OpenAIExpert

EXPERT_KINDS = ("local", "openai")


# ----------------------------------------------------------------------------- input and resume


def read_inputs(path: str | os.PathLike) -> list[tuple[dict, dict]]:
    """(the line's JSON object, its validated record) for every input line; ids must be unique."""
    out, seen = [], {}
    for lineno, obj in iter_json_lines(path):
        record = validate_record(obj, f"{path}:{lineno}", default_id=str(lineno))
        if record["id"] in seen:
            raise RecordError(f"{path}:{lineno}: duplicate id {record['id']!r} "
                              f"(first used on line {seen[record['id']]}; ids must be unique).")
        seen[record["id"]] = lineno
        out.append((obj, record))
    if not out:
        raise RecordError(f"{path}: no records (expected one JSON object per line).")
    return out


def drop_partial_line(path: pathlib.Path, block: int = 1 << 16) -> int:
    """Cuts a trailing partial line (a kill mid-write) off `path`; returns the bytes dropped."""
    with open(path, "rb+") as f:
        size = end = f.seek(0, os.SEEK_END)
        while end > 0:  # scan back block by block for the last newline
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return size - end


def load_done(output: pathlib.Path, input_ids: set[str]) -> list[tuple[str, dict]]:
    """(id, committee) of every complete record already in `output`, after cutting a partial last line."""
    if not output.exists():
        return []
    dropped = drop_partial_line(output)
    if dropped:
        print(f"{output}: dropped a partial last line ({dropped} bytes); that record is redone", file=sys.stderr)
    done = []
    for lineno, obj in iter_json_lines(output):
        where = f"{output}:{lineno}"
        if not isinstance(obj, dict) or "id" not in obj or "thought" not in obj or "committee" not in obj:
            raise RecordError(f"{where}: not a synthesis output record (expected an object with "
                              "'id', 'thought' and 'committee'); choose another config.output.")
        if str(obj["id"]) not in input_ids:
            raise RecordError(f"{where}: id {obj['id']!r} is not in the input: this output belongs to "
                              "another input file; choose another config.output.")
        done.append((str(obj["id"]), obj["committee"]))
    return done


class _Appender:
    """Appends whole lines: one `write` per record, then fsync, so a kill never leaves half a record."""

    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, obj: dict) -> None:
        line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self.fd, line)
        if written != len(line):  # regular files write all at once; anything else is an error
            raise OSError(f"short write: {written} of {len(line)} bytes")
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def chunk_seed(seed: int, ids: Sequence[str]) -> int:
    return int(np.random.SeedSequence([seed, *(stable_hash(i) for i in ids)]).generate_state(1)[0])


# ----------------------------------------------------------------------------- the loop

REJECTED_SCORE = -1e30  # a degenerate candidate's score in the vote


def corpus_pool(records: Sequence[dict], corpus: dict[str, dict], top: int) -> dict[str, list[dict]]:
    """For each record, BM25's top `top` corpus documents for its query that are not its positives
    (by id or by text): extra negatives, so candidates are judged against a larger pool than the
    record's own few (where, with 7 negatives, three candidates often tie)."""
    ids = list(corpus)
    hits = BM25([doc_text(corpus[d]) for d in ids]).top([r["query"] for r in records], top + 8)
    pool = {}
    for record, row in zip(records, hits):
        pos_ids = {d.get("id") for d in record["pos"] if isinstance(d, dict)} - {None}
        pos_texts = {doc_text(d) for d in record["pos"]}
        docs = [dict(corpus[ids[i]], id=ids[i]) for i, _ in row
                if ids[i] not in pos_ids and doc_text(corpus[ids[i]]) not in pos_texts]
        pool[record["id"]] = docs[:top]
    return pool


def synthesize(inputs: Sequence[tuple[dict, dict]], expert: Expert, members: Sequence[committee_lib.Member], *,
               output: str | os.PathLike, num_candidates: int = 3, seed: int = 0, chunk_size: int = 64,
               rule: str = "soft", progress: bool = True, reject_degenerate: bool = True, min_words: int = 5,
               pool: dict[str, list[dict]] | None = None) -> dict:
    """Runs (or resumes) synthesis over `inputs` (from `read_inputs`) and returns the summary.

    With `reject_degenerate`, candidates that `degenerate.rejection` flags (empty, too short, loops,
    the query again, chat meta-text) cannot win the vote; their reasons are kept in the record's
    `committee.rejected` and counted in the summary. A record whose every candidate is rejected keeps
    no thought (`thought` "", `committee.chosen` null): it trains without one. `pool` ({record id:
    documents}, `corpus_pool`) adds negatives to what the committee scores against, not to the records.
    """
    if num_candidates < 1 or chunk_size < 1:
        raise ValueError(f"num_candidates={num_candidates}, chunk_size={chunk_size}: expected >= 1")
    if rule not in committee_lib.RULES:
        raise ValueError(f"rule={rule!r}: expected one of {committee_lib.RULES}")
    names = [m.name for m in members]
    if not members or len(set(names)) != len(names):
        raise ValueError(f"committee members {names}: expected at least one, with distinct names")
    weights = {m.name: m.weight for m in members}
    committee_lib.vote({m: np.zeros((1, 1)) for m in weights}, weights, rule)  # checks the weights now

    output = pathlib.Path(output)
    done = load_done(output, {rec["id"] for _, rec in inputs})
    done_ids = {rid for rid, _ in done}
    committees = [c for _, c in done]  # what the summary needs, not the whole records
    todo = [(obj, rec) for obj, rec in inputs if rec["id"] not in done_ids]

    # Counted in thoughts, advanced after each generated batch: a chunk of records takes minutes.
    bar = ProgressBar(len(inputs) * num_candidates, initial=len(done) * num_candidates, enabled=progress,
                      desc="synthesize", unit="thought", log_every_s=30.0)
    appender = _Appender(output)
    summary_path = pathlib.Path(str(output) + ".summary.json")
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            records = [rec for _, rec in chunk]
            try:
                candidates = expert.propose(records, num_candidates, chunk_seed(seed, [r["id"] for r in records]),
                                            on_batch=bar.advance)
            except ExpertError as e:
                left = len(inputs) - len(committees)
                summary = dict(summarize(committees, seed=seed), incomplete={"error": str(e), "records_left": left})
                with atomic_open(summary_path) as f:
                    json.dump(summary, f, indent=2)
                raise ExpertError(f"{e}; so records {records[0]['id']} .. {records[-1]['id']} were not written "
                                  f"({len(committees)} records are, {left} are left): rerun the same command "
                                  "to resume") from None
            judged = records if pool is None else [dict(r, neg=list(r.get("neg") or []) + pool.get(r["id"], []))
                                                   for r in records]
            scores = {m.name: m.score(judged, candidates) for m in members}
            rejected = [[degenerate.rejection(t, rec["query"], min_words) if reject_degenerate else None
                         for t in cands] for rec, cands in zip(records, candidates)]
            out_of_vote = np.array([[r is not None for r in row] for row in rejected])
            # A rejected candidate scores below any real one for every member (finite: a zero weight times it is 0).
            # Ties go to a seeded random candidate, drawn per record (the same whatever the chunking).
            tie_break = np.stack([np.random.default_rng([seed, stable_hash(rec["id"])]).random(len(cands))
                                  for rec, cands in zip(records, candidates)])
            result = committee_lib.vote({m: np.where(out_of_vote, REJECTED_SCORE, s) for m, s in scores.items()},
                                        weights, rule, tie_break=tie_break)
            for i, ((obj, rec), cands) in enumerate(zip(chunk, candidates)):
                c = None if out_of_vote[i].all() else int(result.chosen[i])
                record_committee = {
                    "rule": rule, "chosen": c, "weights": weights,
                    "scores": {m: [round(float(s), 6) for s in scores[m][i]] for m in names},
                    "picks": {m: int(result.picks[m][i]) for m in names},
                    "rejected": {str(j): why for j, why in enumerate(rejected[i]) if why is not None},
                }
                out = dict(obj)
                out.update(id=obj.get("id", rec["id"]), all_thought=list(cands),
                           thought="" if c is None else cands[c], committee=record_committee)
                appender.write(out)
                committees.append(record_committee)
    finally:
        appender.close()
        bar.close()
    summary = summarize(committees, seed=seed)
    with atomic_open(summary_path) as f:
        json.dump(summary, f, indent=2)
    return summary


def summarize(committees: Sequence[dict], seed: int = 0) -> dict:
    """From the records' `committee` entries: records, candidates, each member's agreement with the
    vote, and each member's mean rank of the best positive for the chosen candidate vs a random
    candidate (a seeded uniform draw per record) and vs all candidates (the random draw's expectation)."""
    rng = np.random.default_rng(seed)
    members: dict[str, dict] = {}
    candidates, no_thought = 0, 0
    reasons = dict.fromkeys(degenerate.REASONS, 0)
    for c in committees:
        n = len(next(iter(c["scores"].values())))
        candidates += n
        random_pick = int(rng.integers(n))
        for why in c.get("rejected", {}).values():
            reasons[why] = reasons.get(why, 0) + 1
        if c["chosen"] is None:  # every candidate rejected: no thought, no rank to compare
            no_thought += 1
            continue
        for m, s in c["scores"].items():
            ranks = 1.0 / np.asarray(s, np.float64)
            st = members.setdefault(m, {"records": 0, "agree": 0, "rank_chosen": 0.0, "rank_random": 0.0,
                                        "rank_mean": 0.0, "ties": 0, "with": {}})
            st["records"] += 1
            st["agree"] += int(c["picks"][m] == c["chosen"])
            usable = [j for j in range(n) if str(j) not in c.get("rejected", {})]
            st["ties"] += int(committee_lib.tied_at_top(np.asarray(s)[usable]).sum() > 1)
            for other, pick in c["picks"].items():
                if other != m:
                    st["with"][other] = st["with"].get(other, 0) + int(pick == c["picks"][m])
            st["rank_chosen"] += ranks[c["chosen"]]
            st["rank_random"] += ranks[random_pick]
            st["rank_mean"] += ranks.mean()
    table = {m: {"agreement": st["agree"] / st["records"],
                 "tie_rate": st["ties"] / st["records"],  # its best usable candidates tie: its pick is a draw
                 "agreement_with": {o: k / st["records"] for o, k in sorted(st["with"].items())},
                 "mean_rank_chosen": st["rank_chosen"] / st["records"],
                 "mean_rank_random": st["rank_random"] / st["records"],
                 "mean_rank_all_candidates": st["rank_mean"] / st["records"]}
             for m, st in sorted(members.items())}
    return {"records": len(committees), "candidates": candidates, "rejected": reasons,
            "records_without_thought": no_thought, "members": table}


def format_summary(summary: dict) -> str:
    rejected = ", ".join(f"{why} {n}" for why, n in summary["rejected"].items() if n) or "none"
    lines = [f"records: {summary['records']}, candidate thoughts: {summary['candidates']}; rejected before the "
             f"vote: {rejected}; records left without a thought: {summary['records_without_thought']}",
             "| member | agrees with the vote | its top candidates tie | mean positive rank, chosen | random candidate "
             "| all candidates |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m, st in summary["members"].items():
        lines.append(f"| {m} | {st['agreement']:.1%} | {st['tie_rate']:.1%} | {st['mean_rank_chosen']:.2f} | "
                     f"{st['mean_rank_random']:.2f} | {st['mean_rank_all_candidates']:.2f} |")
    for m, st in summary["members"].items():
        if st["agreement_with"]:
            lines.append(f"{m} picks the same candidate as: " + ", ".join(
                f"{o} {k:.1%}" for o, k in st["agreement_with"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- from a config


def check_config(config: ml_collections.ConfigDict) -> None:
    def bad(key, value, expected):
        raise ValueError(f"config.{key}={value!r}: expected {expected}")

    if not config.input:
        bad("input", config.input, "an O1 JSONL file")
    if not config.output:
        bad("output", config.output, "an output JSONL path")
    if pathlib.Path(config.input).expanduser().resolve() == pathlib.Path(config.output).expanduser().resolve():
        bad("output", config.output, "a file other than config.input")
    for key in ("num_candidates", "chunk_size"):
        if config[key] < 1:
            bad(key, config[key], "an integer >= 1")
    if config.limit < 0:
        bad("limit", config.limit, "0 (all records) or a positive count")
    if config.filter.min_words < 0:
        bad("filter.min_words", config.filter.min_words, "a count >= 0")
    e = config.expert
    for key in ("batch_size", "max_new_tokens", "bucket"):
        if e[key] < 1:
            bad(f"expert.{key}", e[key], "an integer >= 1")
    if e.kind not in EXPERT_KINDS:
        bad("expert.kind", e.kind, f"one of {EXPERT_KINDS}")
    if e.kind == "openai":
        if not str(e.base_url).startswith(("http://", "https://")):
            bad("expert.base_url", e.base_url, "a server's API root, e.g. http://127.0.0.1:8000/v1")
        if not e.model:
            bad("expert.model", e.model, "the served model's name (GET {base_url}/models lists it)")
        if e.max_concurrency < 1 or e.max_retries < 0:
            bad("expert.max_concurrency", (e.max_concurrency, e.max_retries), ">= 1 (and max_retries >= 0)")
        if not e.timeout > 0 or not e.backoff >= 0:
            bad("expert.timeout", (e.timeout, e.backoff), "seconds > 0 (and backoff >= 0)")
    if e.num_examples < 0 or e.example_max_words < 0:
        bad("expert.num_examples", (e.num_examples, e.example_max_words), ">= 0 (and example_max_words >= 0)")
    if config.committee.pool.bm25_top < 0 or (config.committee.pool.bm25_top and not config.committee.pool.corpus):
        bad("committee.pool", dict(config.committee.pool), "bm25_top >= 0, and a corpus.jsonl when it is > 0")
    if config.committee.rule not in committee_lib.RULES:
        bad("committee.rule", config.committee.rule, f"one of {committee_lib.RULES}")
    members = config.committee.members
    if not any(float(spec.weight) > 0 for spec in members.values()):
        bad("committee.members", list(members.keys()), "at least one member with weight > 0")
    for name, spec in members.items():
        if spec.kind not in committee_lib.KINDS:
            bad(f"committee.members.{name}.kind", spec.kind, f"one of {committee_lib.KINDS}")
        if not float(spec.weight) >= 0:
            bad(f"committee.members.{name}.weight", spec.weight, ">= 0")


def build_members(config: ml_collections.ConfigDict) -> list[committee_lib.Member]:
    """Members with weight > 0, in config order."""
    return [committee_lib.build_member(name, spec) for name, spec in config.committee.members.items()
            if float(spec.weight) > 0]


def build_expert(config: ml_collections.ConfigDict, records: Sequence[dict]) -> Expert:
    """`LlamaExpert` on the local model (expert.kind "local") or `OpenAIExpert` on a server ("openai")."""
    e = config.expert
    pool = FewShotPool(records, num_examples=e.num_examples, seed=config.seed, max_words=e.example_max_words)
    settings = GenerationSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                                  bucket=e.bucket)
    if e.kind == "openai":
        key_env = e.api_key_env
        hint = f"the key in ${key_env} (config.expert.api_key_env)" if key_env else "config.expert.api_key_env"
        return OpenAIExpert(pool, base_url=e.base_url, model=e.model, settings=settings, batch_size=e.batch_size,
                            fresh_examples=e.fresh_examples, api_key=os.environ.get(key_env) if key_env else None,
                            max_concurrency=e.max_concurrency, timeout=e.timeout, max_retries=e.max_retries,
                            backoff=e.backoff, api_key_hint=hint)
    return LlamaExpert.load(e.model, pool, batch_size=e.batch_size, dtype=e.dtype, settings=settings,
                            fresh_examples=e.fresh_examples)


def run(config: ml_collections.ConfigDict) -> dict:
    """The CLI's work: read, build the expert and the committee, synthesize, print the summary."""
    check_config(config)
    start = time.perf_counter()
    every = read_inputs(pathlib.Path(config.input).expanduser())
    inputs = every[:config.limit] if config.limit else every
    members = build_members(config)
    # Few-shot examples come from every input record, so a --config.limit run prompts as a full one.
    expert = build_expert(config, [rec for _, rec in every])
    p = config.committee.pool
    pool = corpus_pool([rec for _, rec in inputs], load_corpus(pathlib.Path(p.corpus).expanduser()),
                       p.bm25_top) if p.bm25_top else None
    try:
        summary = synthesize(inputs, expert, members, output=pathlib.Path(config.output).expanduser(),
                             num_candidates=config.num_candidates, seed=config.seed, chunk_size=config.chunk_size,
                             rule=config.committee.rule, progress=config.progress,
                             reject_degenerate=config.filter.enabled, min_words=config.filter.min_words, pool=pool)
    finally:
        expert.close()
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(format_summary(summary))
    print(f"wrote {config.output} ({summary['seconds']} s)")
    return summary

"""Degenerate candidate thoughts (o1_jax/synthesis/degenerate.py) are rejected before the vote,
counted by reason, and a record with nothing else trains without a thought; resume keeps the counts."""

import json

import numpy as np
import pytest

from o1_jax.synthesis import committee, degenerate, pipeline

QUERY = "does green tea contain caffeine"
GOOD = "Green tea contains about 28 mg of caffeine per cup, less than coffee."


@pytest.mark.parametrize("thought, reason", [
    ("   ", "empty"),
    ("tea leaves", "too_short"),
    ("D-A-A-B-C-D-A-A-B-C-D-A-A-B-C-D-A-A-B-C-D-A-A-B-C", "repetition"),  # seen from SmolLM2-135M
    ("the cat sat on the mat " * 4, "repetition"),
    ("Caffeine: does green tea contain?", "copies_query"),  # the same words, any order
    ("Yes, the answer is yes.", "meta_text"),  # seen from SmolLM2-135M
    ("Sure! Here is a passage about green tea and its caffeine.", "meta_text"),
    ("As an AI language model I cannot browse, but tea has caffeine.", "meta_text"),
    (GOOD, None),
    ("Yes. Tea plants make caffeine in their young leaves to deter insects.", None),  # a 'yes' that answers
])
def test_each_reason(thought, reason):
    assert degenerate.rejection(thought, QUERY) == reason
    assert reason is None or reason in degenerate.REASONS


class FixedExpert:
    """Proposes the given candidates for every record (the pipeline needs only `propose`)."""

    def __init__(self, candidates):
        self.candidates = candidates

    def propose(self, records, n, rng_seed, on_batch=None):
        return [list(self.candidates[r["id"]]) for r in records]


class FavoursFirst(committee.Member):
    """Scores candidate 0 highest: without the filter the vote would pick it."""

    def __init__(self):
        super().__init__("first")

    def similarities(self, records, candidates):  # candidate 0 ranks the positive first, the others second
        return [(np.array([[-float(j)] for j in range(len(c))]), np.full((len(c), 1), -0.5)) for c in candidates]


def _inputs():
    recs = [{"id": f"q{i}", "query": QUERY, "pos": ["Green tea has caffeine."], "neg": ["Rooibos has none."]}
            for i in range(3)]
    return [(dict(r), pipeline.validate_record(r, f"line {i}", default_id=r["id"])) for i, r in enumerate(recs)]


CANDIDATES = {"q0": ["Yes, the answer is yes.", GOOD, "tea tea"],  # the degenerate favourite loses
              "q1": [GOOD, "", "Sure, here is a passage."],
              "q2": ["", "ok", "D-A-A-B-C-D-A-A-B-C-D-A-A-B-C-D-A-A-B-C-D-A-A-B-C"]}  # nothing usable


def test_the_vote_skips_rejected_candidates_and_the_summary_counts_them(tmp_path):
    out = tmp_path / "thoughts.jsonl"
    summary = pipeline.synthesize(_inputs(), FixedExpert(CANDIDATES), [FavoursFirst()], output=out, num_candidates=3,
                                  progress=False)
    lines = {o["id"]: o for o in map(json.loads, out.read_text().splitlines())}
    assert lines["q0"]["thought"] == GOOD and lines["q0"]["committee"]["chosen"] == 1
    assert lines["q1"]["thought"] == GOOD
    assert lines["q2"]["thought"] == "" and lines["q2"]["committee"]["chosen"] is None  # trains without one
    assert lines["q0"]["committee"]["rejected"] == {"0": "meta_text", "2": "too_short"}
    assert summary["rejected"] == {"empty": 2, "too_short": 1, "repetition": 1, "copies_query": 0, "meta_text": 3}
    assert summary["records_without_thought"] == 1 and summary["records"] == 3
    assert "records left without a thought: 1" in pipeline.format_summary(summary)
    # A resumed run reads the written records back: the same summary
    again = pipeline.synthesize(_inputs(), FixedExpert(CANDIDATES), [FavoursFirst()], output=out, num_candidates=3,
                                progress=False)
    assert again == summary


def test_the_filter_can_be_switched_off(tmp_path):
    out = tmp_path / "thoughts.jsonl"
    summary = pipeline.synthesize(_inputs(), FixedExpert(CANDIDATES), [FavoursFirst()], output=out, num_candidates=3,
                                  progress=False, reject_degenerate=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [o["committee"]["chosen"] for o in lines] == [0, 0, 0] and summary["records_without_thought"] == 0
    assert sum(summary["rejected"].values()) == 0


def test_ties_break_at_random_per_record_seeded_and_the_summary_reports_tie_rates(tmp_path):
    """A member that scores every candidate alike: the vote is a seeded draw per record (not always
    candidate 0), the same in a second run, and the member's tie rate is 1."""
    class Indifferent(committee.Member):
        def similarities(self, records, candidates):
            return [(np.zeros((len(c), 1)), np.full((len(c), 1), -1.0)) for c in candidates]

    recs = [{"id": f"q{i}", "query": QUERY, "pos": ["Green tea has caffeine."], "neg": ["Rooibos has none."]}
            for i in range(12)]
    inputs = [(dict(r), pipeline.validate_record(r, f"line {i}", default_id=r["id"])) for i, r in enumerate(recs)]
    cands = {r["id"]: [f"{GOOD} Version {j} for {r['id']}." for j in range(3)] for r in recs}
    chosen = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.jsonl"
        summary = pipeline.synthesize(inputs, FixedExpert(cands), [Indifferent("flat"), FavoursFirst()], output=out,
                                      num_candidates=3, progress=False, seed=7)
        chosen.append([json.loads(line)["committee"]["picks"]["flat"] for line in out.read_text().splitlines()])
    assert chosen[0] == chosen[1] and len(set(chosen[0])) > 1  # seeded, and not the lowest index every time
    assert summary["members"]["flat"]["tie_rate"] == 1.0 and summary["members"]["first"]["tie_rate"] == 0.0
    assert summary["members"]["flat"]["agreement_with"]["first"] == pytest.approx(
        np.mean([c == 0 for c in chosen[0]]))

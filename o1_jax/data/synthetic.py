"""The built-in demo task: a synthetic retrieval set on which thinking helps.

A world of 1,600 people named "<first> <last>" (made-up words, 40 x 40), each
living in a city, working a job, liking a hobby. Two relations (friend,
neighbour) link people by a fixed rule on the name parts: the friend of
"f l" is "pi(f) sigma(l)", with one pair of permutations per relation drawn
from the seed. So

  query:    where does the friend of kamo rizel live ?
  thought:  the friend of kamo rizel is bane tosul . so the answer is where bane tosul lives .
  positive: bane tosul | lives in oslo , works as a baker and likes chess .

The query never names the person whose document answers it, and the document
never names the person in the query. The person it does name (kamo rizel) has
a document of its own, which is the hardest negative: a retriever that matches
the query's words finds the wrong person. A model that has learned the
relation rule writes the right name in its thought and the thought leads to
the document. The rule acts on each name part separately, so it generalises
to people never asked about in training: the test split asks only about
people that no training query mentions.

Two relations, not more, so that the demo's tiny model learns the rule in a
few hundred steps on a CPU: it must learn one first-name and one last-name
map per relation, 2 x 40 (relation, name part) pairs each. With four
relations (4 x 40 pairs each) the demo's 400 steps got the related person's
first name right in 71% of the held-out thoughts, the last name in 52%, both
in 36%, and thinking reached nDCG@10 0.46 (two relations: 1.00).

Hard negatives: the asked-about person's own document, the document of that
person's other relation, then people sharing a name part, city, job or hobby
with the answer. The vocabulary is closed (188 words) and does not depend on
the seed, so `make_tokenizer()` covers every seed.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile
from dataclasses import dataclass

import numpy as np

from o1_jax.files import atomic_write_text

__all__ = [
    "RELATIONS",
    "ATTRIBUTES",
    "World",
    "make_world",
    "vocabulary",
    "make_tokenizer",
    "make_records",
    "make_test_split",
    "write_demo_data",
]

N_FIRST, N_LAST = 40, 40
TEST_FRACTION = 0.1  # of people held out as the subject of test queries

RELATIONS = ("friend", "neighbour")  # see the module docstring: more are learnt too slowly for the demo
ATTRIBUTES = ("city", "job", "hobby")

CITIES = (
    "paris", "lima", "oslo", "cairo", "delhi", "tokyo", "rome", "berlin", "madrid", "vienna",
    "prague", "dublin", "lisbon", "athens", "moscow", "seoul", "manila", "havana", "nairobi", "accra",
    "quito", "bogota", "caracas", "santiago", "sydney", "perth", "denver", "boston", "chicago", "toronto",
)
JOBS = (  # consonant-initial so "works as a {job}" reads right
    "baker", "teacher", "doctor", "pilot", "farmer", "painter", "nurse", "lawyer", "chef", "driver",
    "singer", "writer", "dentist", "plumber", "tailor", "carpenter", "builder", "banker", "sailor", "judge",
    "miner", "potter", "barber", "butcher", "clerk", "weaver", "dancer", "poet", "gardener", "mechanic",
)
HOBBIES = (
    "chess", "tennis", "hiking", "fishing", "swimming", "cycling", "golf", "jazz", "opera", "knitting",
    "skiing", "climbing", "running", "rowing", "boxing", "surfing", "karate", "cinema", "poetry", "dominoes",
)

# (query templates, how the thought ends) per attribute; {rel}, {a}, {b} filled in.
QUERY_TEMPLATES = {
    "city": ("where does the {rel} of {a} live ?", "in which city does the {rel} of {a} live ?"),
    "job": ("what is the job of the {rel} of {a} ?", "what does the {rel} of {a} work as ?"),
    "hobby": ("what does the {rel} of {a} like ?", "which hobby does the {rel} of {a} enjoy ?"),
}
THOUGHT_TEMPLATE = "the {rel} of {a} is {b} . so the answer is {tail} ."
THOUGHT_TAILS = {
    "city": "where {b} lives",
    "job": "the job of {b}",
    "hobby": "what {b} likes",
}
DOC_TEMPLATE = "lives in {city} , works as a {job} and likes {hobby} ."

SPECIALS = ("<pad>", "<unk>", "<eos>")


# ---- vocabulary ----

def _template_words() -> set[str]:
    texts = [t for ts in QUERY_TEMPLATES.values() for t in ts] + [THOUGHT_TEMPLATE, DOC_TEMPLATE]
    texts += list(THOUGHT_TAILS.values())
    words = set()
    for t in texts:
        words.update(w for w in t.split() if not w.startswith("{"))
    return words


@functools.lru_cache(maxsize=None)
def _name_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """40 first and 40 last names: made-up words from a fixed generator (not the task seed)."""
    rng = np.random.default_rng(20250211)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    syl = [c + v for c in cons for v in vows]
    taken = set(RELATIONS) | set(CITIES) | set(JOBS) | set(HOBBIES) | _template_words()
    firsts: list[str] = []
    lasts: list[str] = []
    while len(firsts) < N_FIRST:  # two open syllables: "kamo"
        w = syl[rng.integers(len(syl))] + syl[rng.integers(len(syl))]
        if w not in taken:
            taken.add(w)
            firsts.append(w)
    while len(lasts) < N_LAST:  # two syllables and a closing consonant: "rizel"
        w = syl[rng.integers(len(syl))] + syl[rng.integers(len(syl))] + "lnrs"[rng.integers(4)]
        if w not in taken:
            taken.add(w)
            lasts.append(w)
    return tuple(firsts), tuple(lasts)


def vocabulary() -> list[str]:
    """Every word the task can produce (sorted), the tokenizer's specials excluded."""
    firsts, lasts = _name_parts()
    words = set(firsts) | set(lasts) | set(RELATIONS) | set(CITIES) | set(JOBS) | set(HOBBIES)
    return sorted(words | _template_words())


def make_tokenizer(out_dir: str | os.PathLike | None = None):
    """Word-level tokenizer over the task vocabulary, with <pad>, <unk>, <eos> (pad and eos set).

    The O1 special tokens are not in it: `o1_jax.data.formatting.add_special_tokens` adds them.
    Saved to `out_dir` when given, so `AutoTokenizer.from_pretrained(out_dir)` loads it.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(list(SPECIALS) + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # also splits "?" and "." off words
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )
    if out_dir is not None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".tok-") as tmp:  # whole files only
            for f in hf.save_pretrained(tmp):
                if os.path.isfile(f):
                    os.replace(f, out / os.path.basename(f))
    return hf


# ---- the world ----

@dataclass(frozen=True, eq=False)
class World:
    """People and relations drawn from one seed; person p is (p // N_LAST, p % N_LAST)."""

    seed: int
    city: np.ndarray  # [N] index into CITIES
    job: np.ndarray  # [N] index into JOBS
    hobby: np.ndarray  # [N] index into HOBBIES
    first_map: np.ndarray  # [R, N_FIRST] first name of the relation's target
    last_map: np.ndarray  # [R, N_LAST]
    test_people: np.ndarray  # sorted person ids never asked about in training

    @property
    def num_people(self) -> int:
        return N_FIRST * N_LAST

    def name(self, p: int) -> str:
        firsts, lasts = _name_parts()
        return f"{firsts[p // N_LAST]} {lasts[p % N_LAST]}"

    def related(self, p: int, r: int) -> int:
        return int(self.first_map[r, p // N_LAST]) * N_LAST + int(self.last_map[r, p % N_LAST])

    def doc(self, p: int) -> dict:
        text = DOC_TEMPLATE.format(city=CITIES[self.city[p]], job=JOBS[self.job[p]], hobby=HOBBIES[self.hobby[p]])
        return {"title": self.name(p), "text": text}

    def doc_id(self, p: int) -> str:
        return f"p{p:04d}"


def _relation_maps(rng: np.random.Generator, n: int) -> np.ndarray:
    """[R, n]: map_r(x) = order^-1[(order[x] + shift_r) % n] with distinct nonzero shifts,
    so no one is their own relation and the R relations of a person are R different people."""
    order = rng.permutation(n)
    inverse = np.argsort(order)
    shifts = rng.choice(np.arange(1, n), size=len(RELATIONS), replace=False)
    return np.stack([inverse[(order + s) % n] for s in shifts])


@functools.lru_cache(maxsize=8)
def make_world(seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    n = N_FIRST * N_LAST
    return World(
        seed=seed,
        city=rng.integers(len(CITIES), size=n),
        job=rng.integers(len(JOBS), size=n),
        hobby=rng.integers(len(HOBBIES), size=n),
        first_map=_relation_maps(rng, N_FIRST),
        last_map=_relation_maps(rng, N_LAST),
        test_people=np.sort(rng.choice(n, size=int(round(TEST_FRACTION * n)), replace=False)),
    )


# ---- queries, thoughts, records ----

def _questions(world: World, people: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Every (person, relation, attribute, template) question about `people`."""
    return [(int(p), r, a, t) for p in people for r in range(len(RELATIONS))
            for a in range(len(ATTRIBUTES)) for t in range(2)]


def _texts(world: World, p: int, r: int, a: int, t: int) -> tuple[str, str, int]:
    """(query, thought, answer person) of one question."""
    attr, rel = ATTRIBUTES[a], RELATIONS[r]
    b = world.related(p, r)
    an, bn = world.name(p), world.name(b)
    query = QUERY_TEMPLATES[attr][t].format(rel=rel, a=an)
    thought = THOUGHT_TEMPLATE.format(rel=rel, a=an, b=bn, tail=THOUGHT_TAILS[attr].format(b=bn))
    return query, thought, b


def _hard_negatives(world: World, rng: np.random.Generator, p: int, r: int, b: int, k: int) -> list[int]:
    """About half from the traps around the question (the subject, then its other relations),
    the rest from people sharing a name part or an attribute with the answer."""
    traps = [p] + [world.related(p, o) for o in range(len(RELATIONS)) if o != r]
    fb, lb = b // N_LAST, b % N_LAST
    ids = np.arange(world.num_people)
    alike = (ids // N_LAST == fb) | (ids % N_LAST == lb) | (world.city == world.city[b]) \
        | (world.job == world.job[b]) | (world.hobby == world.hobby[b])
    similar = ids[alike & (ids != b) & ~np.isin(ids, traps)]
    n_traps = min(len(traps), (k + 1) // 2)
    others = [traps[1 + i] for i in rng.permutation(len(traps) - 1)]
    chosen = ([p] + others)[:n_traps]  # the subject's own document always, the query's words point at it
    chosen += [int(x) for x in rng.choice(similar, size=k - n_traps, replace=False)]
    return chosen


def make_records(num_records: int, seed: int, num_negatives: int = 3) -> list[dict]:
    """Training records in the O1 schema (id, query, pos, neg, thought) about non-test people."""
    world = make_world(seed)
    train_people = np.setdiff1d(np.arange(world.num_people), world.test_people)
    questions = _questions(world, train_people)
    if not 0 < num_records <= len(questions):
        raise ValueError(f"num_records must be in [1, {len(questions)}] for the synthetic task, got {num_records}.")
    if not 0 <= num_negatives <= 16:
        raise ValueError(f"num_negatives must be in [0, 16], got {num_negatives}.")
    rng = np.random.default_rng([seed, 1])
    records = []
    for i, j in enumerate(rng.choice(len(questions), size=num_records, replace=False)):
        p, r, a, t = questions[j]
        query, thought, b = _texts(world, p, r, a, t)
        neg = _hard_negatives(world, rng, p, r, b, num_negatives)
        records.append({
            "id": f"syn{seed}-train-{i:06d}",
            "query": query,
            "pos": [world.doc(b)],
            "neg": [world.doc(x) for x in neg],
            "thought": thought,
        })
    return records


def make_test_split(num_test: int, seed: int) -> dict:
    """BEIR-style test split about the held-out people: corpus (every person), queries, qrels, gold thoughts."""
    world = make_world(seed)
    questions = _questions(world, world.test_people)
    if not 0 < num_test <= len(questions):
        raise ValueError(f"num_test must be in [1, {len(questions)}] for the synthetic task, got {num_test}.")
    rng = np.random.default_rng([seed, 2])
    picked = sorted(rng.choice(len(questions), size=num_test, replace=False))
    corpus = [{"_id": world.doc_id(p), **world.doc(p)} for p in range(world.num_people)]
    queries, qrels, thoughts = [], [], []
    for i, j in enumerate(picked):
        query, thought, b = _texts(world, *questions[j])
        qid = f"q{i:05d}"
        queries.append({"_id": qid, "text": query})
        qrels.append((qid, world.doc_id(b), 1))
        thoughts.append({"_id": qid, "thought": thought})
    return {"corpus": corpus, "queries": queries, "qrels": qrels, "thoughts": thoughts}


# ---- files ----

def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_demo_data(out_dir: str | os.PathLike, seed: int, num_train: int, num_test: int) -> pathlib.Path:
    """Writes the demo task to out_dir and returns it.

      train.jsonl            O1 training records (with thoughts)
      corpus.jsonl           BEIR corpus: every person's document {_id, title, text}
      queries.jsonl          BEIR test queries {_id, text}, about held-out people only
      qrels/test.tsv         query-id, corpus-id, score (with header)
      test_thoughts.jsonl    {_id, thought}: the gold thought of each test query (an upper bound)
    """
    out = pathlib.Path(out_dir)
    test = make_test_split(num_test, seed)
    atomic_write_text(out / "train.jsonl", _jsonl(make_records(num_train, seed)))
    atomic_write_text(out / "corpus.jsonl", _jsonl(test["corpus"]))
    atomic_write_text(out / "queries.jsonl", _jsonl(test["queries"]))
    atomic_write_text(out / "test_thoughts.jsonl", _jsonl(test["thoughts"]))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in test["qrels"])
    atomic_write_text(out / "qrels" / "test.tsv", qrels)
    return out

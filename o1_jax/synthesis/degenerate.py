"""Degenerate candidate thoughts, rejected before the committee votes.

A small expert often writes thoughts that carry nothing a retriever could use (sampled with the
project's own prompt, 5 of 12 SmolLM2-135M thoughts were empty meta-text or loops: "Yes, the answer
is yes.", "D-A-A-B-C-..."). Each check names its reason, and synthesis counts them:

    empty         nothing but whitespace
    too_short     fewer than `min_words` words
    repetition    a loop: over half of the word 3-grams repeat an earlier one, or (for text without
                  spaces to split on) under a quarter of the character 4-grams are distinct
    copies_query  the query again: the same words, in any order (Jaccard >= 0.9)
    meta_text     chat talk about answering instead of an answer ("Sure, ...", "As an AI ...",
                  "Yes, the answer is ...", "I'm sorry ...")
"""

from __future__ import annotations

import re

REASONS = ("empty", "too_short", "repetition", "copies_query", "meta_text")
META_PATTERNS = (
    r"^(sure|certainly|of course|okay|ok)\b[,.!]?",
    r"^(yes|no)\b[,.!]?\s*(the answer is|it is|it does)\b",
    r"^(the )?answer is (yes|no)\b",
    r"^(as an ai|i am an ai|i'm an ai|i'm sorry|i am sorry|i cannot|i can't|i don't know|i do not know)\b",
    r"^(here is|here's|here are) (a|an|the|my|some)?\s*(passage|answer|response|thought)s?\b",
)
_META = re.compile("|".join(f"(?:{p})" for p in META_PATTERNS), re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _repeats(words: list[str], text: str) -> bool:
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(grams) >= 4 and 1 - len(set(grams)) / len(grams) > 0.5:
        return True
    compact = re.sub(r"\s+", " ", text.lower())
    chars = [compact[i:i + 4] for i in range(len(compact) - 3)]
    return len(chars) >= 20 and len(set(chars)) / len(chars) < 0.25


def rejection(thought: str, query: str, min_words: int = 5) -> str | None:
    """The first reason (REASONS) `thought` is degenerate for `query`, or None for a usable thought."""
    text = thought.strip()
    if not text:
        return "empty"
    words = _words(text)
    if _META.search(text):
        return "meta_text"
    if _repeats(words, text):
        return "repetition"
    query_words = set(_words(query))
    if query_words and len(set(words) & query_words) / len(set(words) | query_words) >= 0.9:
        return "copies_query"
    if len(words) < min_words:
        return "too_short"
    return None

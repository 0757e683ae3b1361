"""Guards against the known classes of false semantic hits.

A sentence embedder scores "Why do people change?" and "Why don't people change?" as near
twins, and "the best hotel in Ohio" as close to "the best hotel in Kentucky". Each guard here
is a general rule that holds for any text, checked on a candidate the index found above the
threshold; a candidate that fails one is not served (the next candidate may be):

- ``negation``: one text is negated and the other is not (``not``, ``n't``, ``never``,
  ``no``, ``without``, ...). Meaning flips with polarity; similarity barely moves.
- ``numbers``: the texts name different numbers (digits, with separators and decimals
  normalized, and the number words zero..twenty). "over 90" and "over 98" ask different things.
- ``entities``: a name in one text is absent from the other. Names are capitalized words
  not at the start of a sentence, words with inner capitals or digits (``PyTorch``, ``i5``,
  ``C#``), code-like identifiers (``load_dataset``, ``x.y()``), and quoted or backticked
  strings. Case is ignored when looking for the name in the other text, so rewording that
  keeps the names passes.
- ``question``: both texts are questions that expect different kinds of answer: a reason
  (why), a time (when), a place (where), a person (who), a quantity (how many/much), a yes
  or no (is, can, does...), or an open one (what, which, how). "Can I become a boxer?" is not
  "How can I become a boxer?", however alike their words.

Guards read only the two texts, so they cost microseconds; :func:`check` returns the first
rule that failed, for the ``reason`` of a declined hit in logs and metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["GUARDS", "TextFeatures", "features", "check"]

_NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere",
                        "cannot", "neednt", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt",
                        "werent", "wont", "cant", "couldnt", "shouldnt", "wouldnt", "hasnt", "havent", "hadnt"})
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split()) if word != "one"}
# "one" is left out: far more often a pronoun ("one can") or idiom ("in one go") than a count.
_FUNCTION_WORDS = frozenset(
    "a an the and or but if then else when while during before after of in on at to for from by with "
    "about as into over under is are was were be been do does did can could will would should may might "
    "must shall what which who whom whose why how where there here this that these those it its my your "
    "our their his her we you they he she me us them i".split())
_WORD = re.compile(r"[^\W_][\w'’]*(?:[.\-+#][\w'’#+]+)*[#+]*", re.UNICODE)
_NUMBER = re.compile(r"(?:(?<=\bv)|(?<![\w.]))[-+]?\d[\d,]*(?:\.\d+)*(?![\w])")
_ENUMERATOR = re.compile(r"(?:^|\n)\s*\(?\d{1,2}[.)]\s|(?<![\w.])\(?\d{1,2}\)\s")
_VERSION = re.compile(r"[vV]?\d[\d.,]*")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "no"})
_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]+)\"|“([^”\n]+)”|(?<!\w)'([^'\n]+)'(?!\w)")
_QUOTED_MAX = 80
"""Longer quoted spans are prose, not names. Spans pair left to right (as Markdown code spans
do) before this bound applies, so the text between two long spans is never taken for one."""
_SENTENCE_END = re.compile(r"[.!?:;]\s*$|^\s*$|[\n(\[\"“]\s*$")
_QUESTION = re.compile(r"[^.?!\n]*\?")
_ASKS = {"why": "reason", "when": "time", "where": "place", "who": "person", "whom": "person", "whose": "person",
         "what": "open", "which": "open", "how": "open"}
_AUXILIARIES = frozenset("is are was were am do does did can could will would should shall may might must has have "
                         "had".split())
_IDENTIFIER = re.compile(r".*(?:[a-z][A-Z]|[A-Za-z]\d|\d[A-Za-z]|[_#+]|\.\w|\(\)).*")


@dataclass(frozen=True)
class TextFeatures:
    """What the guards compare, computed once per text."""

    words: tuple[str, ...]
    """Lower-cased words in order, for looking names up."""
    lowered: str
    initials: tuple[str, ...]
    """Per word, its capitals (``TypeScript`` -> ``ts``) or else its first letter, for acronyms."""
    negated: bool
    digits: frozenset[str]
    """Numbers written with digits, normalized (``10,000`` -> ``10000``, ``2.50`` -> ``2.5``)."""
    number_words: frozenset[str]
    """Numbers written as words (``three`` -> ``3``)."""
    entities: frozenset[str]
    """Lower-cased names, identifiers and quoted strings."""
    question: str | None
    """The kind of answer the (first) question asks for; ``None`` when there is no question."""


@lru_cache(maxsize=4096)
def features(text: str) -> TextFeatures:
    """The guards' view of ``text`` (cached: an entry's text is checked against many queries)."""
    tokens = [(match.group(), match.start()) for match in _WORD.finditer(text)]
    words = tuple(_plain(token.lower()) for token, _ in tokens)
    initials = tuple("".join(c for c in token if c.isupper()).lower() if not token.isupper() and
                     sum(c.isupper() for c in token) > 1 else token[0].lower() for token, _ in tokens)
    return TextFeatures(words, text.lower(), initials, _is_negated(words), _digits(text), _number_words(words),
                        _entities(text, tokens), _question_kind(text))


def _plain(word: str) -> str:
    """``england's`` -> ``england``; quotes and trailing dots dropped."""
    word = word.replace("’", "'").rstrip(".")
    return word[:-2] if word.endswith("'s") else word


def _is_negated(words: tuple[str, ...]) -> bool:
    for index, word in enumerate(words):
        if word.endswith("n't") or word.replace("'", "") in _NEGATIONS:
            if not (word == "not" and index + 1 < len(words) and words[index + 1] == "only"):
                return True  # "not only ... but also" adds, it does not negate
    return False


def _digits(text: str) -> frozenset[str]:
    text = _ENUMERATOR.sub(" ", text)  # list markers (1. 2) (3)) are layout, not content
    return frozenset(_canonical_number(match.group()) for match in _NUMBER.finditer(text))


def _number_words(words: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_NUMBER_WORDS[word.split("-")[0]] for word in words if word.split("-")[0] in _NUMBER_WORDS)


def _canonical_number(text: str) -> str:
    digits = text.replace(",", "").lstrip("+")
    if digits.count(".") > 1:
        return digits  # a version (2.10.0), kept whole
    value = float(digits)
    return str(int(value)) if value.is_integer() else repr(value)


def _entities(text: str, tokens: list[tuple[str, int]]) -> frozenset[str]:
    quoted = (next(group for group in match.groups() if group is not None) for match in _QUOTED.finditer(text))
    names = {_plain(span.strip().lower()) for span in quoted if len(span) <= _QUOTED_MAX}
    names.update(_plain(token.lower()) for token, start in tokens if _is_name(token, text[:start]))
    return frozenset(name for name in names if name and name not in _ABBREVIATIONS)


def _is_name(token: str, before: str) -> bool:
    lowered = _plain(token.lower())
    if _VERSION.fullmatch(token) or lowered in _FUNCTION_WORDS or lowered in _NUMBER_WORDS:
        return False
    if _IDENTIFIER.match(token) or (token.isupper() and len(token) > 1):
        return True  # inner capitals, digits, code, acronyms: a name wherever it stands
    return token[0].isupper() and not _SENTENCE_END.search(before)


def _question_kind(text: str) -> str | None:
    """What the first question in ``text`` asks for: its first interrogative or auxiliary
    word decides (``how many``/``how much``: a quantity)."""
    match = _QUESTION.search(text)
    if match is None:
        return None
    words = [word.lower() for word in _WORD.findall(match.group())]
    for index, word in enumerate(words):
        if word == "how" and index + 1 < len(words) and words[index + 1] in ("many", "much"):
            return "quantity"
        if word in _ASKS:
            return _ASKS[word]
        if word in _AUXILIARIES:
            return "yes-no"
    return None


def _same_question(a: TextFeatures, b: TextFeatures) -> bool:
    return a.question is None or b.question is None or a.question == b.question


def _negation(a: TextFeatures, b: TextFeatures) -> bool:
    return a.negated == b.negated


def _numbers_match(a: TextFeatures, b: TextFeatures) -> bool:
    """Digits must appear on both sides (as digits or words); number words alone differ only
    when both texts have some and they disagree ("two steps" vs "1) ... 2) ..." passes)."""
    if not a.digits <= b.digits | b.number_words or not b.digits <= a.digits | a.number_words:
        return False
    return not (a.number_words and b.number_words and a.number_words.isdisjoint(b.number_words))


def _names_match(a: TextFeatures, b: TextFeatures) -> bool:
    return _all_mentioned(a, b) and _all_mentioned(b, a)


def _all_mentioned(source: TextFeatures, other: TextFeatures) -> bool:
    """Every name of ``source`` occurs in ``other``, or is spelled out by an acronym there."""
    missing = [name for name in source.entities if not _mentions(other, name)]
    if not missing:
        return True
    expanded = _acronym_words(source, [name for name in other.entities if _is_acronym(name)])
    return all(name in expanded for name in missing)


def _mentions(text: TextFeatures, name: str) -> bool:
    """Whether ``name`` occurs in ``text``: as the start of a word (``python`` in ``pythonic``),
    as its stem (``pythonic`` for ``python``), as a phrase, or as an acronym of consecutive
    words (``ML``: machine learning)."""
    if name in text.lowered:
        return True
    parts = name.split()
    if len(parts) > 1:
        return _phrase_at(text.words, [_plain(part) for part in parts]) is not None
    if any(word.startswith(name) or _same_stem(name, word) for word in text.words):
        return True
    if _is_acronym(name) and _acronym_words(text, [name]):
        return True
    return _qualified_mentioned(text, name)


def _qualified_mentioned(text: TextFeatures, name: str) -> bool:
    """A dotted name (``datasets.Metric``, ``Dataset.push_to_hub()``) is mentioned when its
    last part is and every qualifier is a word of ``text``: "the Metric class of datasets"
    names ``datasets.Metric``. Parts of one letter (``U.S.``) do not count."""
    *qualifiers, last = name.split(".")
    if not qualifiers or any(len(part) < 2 for part in (*qualifiers, last)):
        return False
    return all(part in text.words for part in qualifiers) and _mentions(text, last)


def _same_stem(name: str, word: str) -> bool:
    """``pythonic`` and ``python``: the word is the name less a short suffix."""
    return len(word) >= 4 and name.startswith(word) and len(name) - len(word) <= 3


def _is_acronym(name: str) -> bool:
    return name.isalpha() and 2 <= len(name) <= 6


def _acronym_words(text: TextFeatures, acronyms: list[str]) -> set[str]:
    """The words of ``text`` whose initials spell one of ``acronyms``."""
    covered: set[str] = set()
    for acronym in acronyms:
        for start in range(len(text.words)):
            spelled = ""
            for end in range(start, len(text.words)):
                spelled += text.initials[end]
                if not acronym.startswith(spelled):
                    break
                if spelled == acronym:
                    covered.update(text.words[start:end + 1])
                    break
    return covered


def _phrase_at(words: tuple[str, ...], parts: list[str]) -> int | None:
    for start in range(len(words) - len(parts) + 1):
        if all(words[start + k].startswith(part) for k, part in enumerate(parts)):
            return start
    return None


GUARDS: dict[str, Callable[[TextFeatures, TextFeatures], bool]] = {
    "negation": _negation, "numbers": _numbers_match, "entities": _names_match, "question": _same_question,
}
"""Each guard's name and its test: true when the pair may be served."""


def check(query: str, cached: str, enabled: Iterable[str] = tuple(GUARDS)) -> str | None:
    """The name of the first enabled guard that ``query`` and ``cached`` fail, or ``None``."""
    a, b = features(query), features(cached)
    for name in enabled:
        if not GUARDS[name](a, b):
            return name
    return None

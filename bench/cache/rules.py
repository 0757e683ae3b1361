"""Candidate rules for accepting a semantic hit, measured on ``shared/data/semantic``.

Issue 5 asks for 80% paraphrase hits on the mock set (at most 2% of them wrong) while QQP
keeps at most 1% false hits on held-out queries and at most 3% of hard negatives hit. The
default (cosine 0.92 + guards + ambiguity margin) meets the QQP targets and misses the mock
one; this script measures what else was tried, on the same sets and scoring as ``eval.py``:

- ``plain``: the default rule at other thresholds (the reference row);
- ``fp32``: the float embedder instead of int8 (same rule);
- ``length``: a lower threshold when both texts are long (a grid, tuned on these very files:
  an upper bound, not an estimate);
- ``agree``: a hit needs a very high cosine, or a high cosine plus lexical agreement
  (content-word Jaccard, character 3-gram Jaccard, or BERTScore F1 of MiniLM's token vectors);
- ``novel``: the opposite: the threshold rises with the share of the shorter text's content
  words found in the other (reworded paraphrases need less cosine than pairs that share their
  words), tuned on one half of every set and reported on the other (2 folds);
- ``twins``: the ambiguity margin ignores a runner-up that is a paraphrase of the best.

Candidates come from an exact nearest-neighbour search over the cached texts, and each rule
is applied the way :meth:`lbd.cache.semantic.SemanticCache.lookup` applies the threshold, the
guards (``lbd.cache.guards``) and the margin; for the default rule this reproduces
``eval.py`` and ``proxy_eval.py`` hit for hit.

    python bench/cache/rules.py --vectors /tmp/cache-vectors.npz --fp32-vectors /tmp/cache-vectors-fp32.npz
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval import SHARED, embed_table, load, split_clusters  # noqa: E402

from lbd.cache import guards  # noqa: E402

MARGIN = 0.015
Candidates = list[tuple[str, float]]
Accept = Callable[[str, str, float], bool]

# -- lexical signals (English; what a rule of this kind would need) --------------------------------
_STOP = frozenset("""a an the and or but if then else when while during before after of in on at to for from by
with about as into over under is are was were be been being am do does did doing can could will would should may
might must shall what which who whom whose why how where there here this that these those it its my your our their
his her we you they he she me us them i so than too very just also any some such not no only own same other more most
few each all both has have had having get got""".split())
_WORDS = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "edly", "ed", "ies", "es", "s", "ly", "er", "est"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(word) for word in _WORDS.findall(text.lower()) if word not in _STOP}


def trigrams(text: str) -> set[str]:
    padded = " " + " ".join(_WORDS.findall(text.lower())) + " "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def overlap(a: set, b: set) -> float:
    """Share of the smaller set found in the other."""
    return len(a & b) / max(min(len(a), len(b)), 1)


class TokenVectors:
    """MiniLM's (float) last hidden state per token, unit length, for BERTScore."""

    def __init__(self) -> None:
        import onnxruntime
        from lbd_worker.build import ensure_builtin
        from tokenizers import Tokenizer

        built = ensure_builtin("minilm")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(built.onnx_path), options,
                                                     providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(built.tokenizer_path))
        self._tokenizer.enable_truncation(256)
        self._done: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self._done:
            ids = np.asarray([self._tokenizer.encode(text).ids], dtype=np.int64)
            hidden, _ = self._session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                 "token_type_ids": np.zeros_like(ids)})
            tokens = hidden[0, 1:-1]
            self._done[text] = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
        return self._done[text]

    def f1(self, a: str, b: str) -> float:
        similarities = self(a) @ self(b).T
        recall, precision = similarities.max(axis=1).mean(), similarities.max(axis=0).mean()
        return float(2 * recall * precision / (recall + precision))


# -- the sets --------------------------------------------------------------------------------------
def nearest(table: dict[str, np.ndarray], cached: list[str], queries: list[str], count: int = 8) -> list:
    cached = list(dict.fromkeys(text.strip() for text in cached))
    matrix = np.stack([table[text] for text in cached])
    found = []
    for query in queries:
        similarities = matrix @ table[query.strip()]
        rows = np.argsort(-similarities)[:count]
        found.append((query.strip(), [(cached[row], float(similarities[row])) for row in rows]))
    return found


def sets(table: dict[str, np.ndarray], mock: list, qqp: list, negatives: list, seed: int) -> dict:
    """``{name: [(query, candidates, right text or None, fold)]}`` as eval.py builds them."""
    cached_half, query_half = split_clusters(qqp, seed)
    mock_rows = nearest(table, [x["origin"] for x in mock], [x["similar"] for x in mock])
    held_rows = nearest(table, [x["origin"] for x in cached_half], [x["similar"] for x in query_half])
    return {
        "mock": [(q, c, x["origin"].strip(), zlib.crc32(x["origin"].strip().encode()) % 2)
                 for (q, c), x in zip(mock_rows, mock)],
        "held": [(q, c, None, x["cluster"] % 2) for (q, c), x in zip(held_rows, query_half)],
        "negatives": [(x["text_b"].strip(), [(x["text_a"].strip(), float(table[x["text_a"].strip()]
                                                                        @ table[x["text_b"].strip()]))], None, x["idx"] % 2)
                      for x in negatives],
    }


# -- the decision ----------------------------------------------------------------------------------
def decide(query: str, candidates: Candidates, floor: float, accept: Accept,
           twin: Callable[[str, str], bool] | None = None) -> str | None:
    """:meth:`SemanticCache.lookup` with ``accept`` in place of threshold + guards: the best
    acceptable candidate at or above ``floor``, unless another within the margin."""
    live = [(text, score) for text, score in candidates if score >= floor - MARGIN]
    best = next(((text, score) for text, score in live if score >= floor and accept(query, text, score)), None)
    if best is None:
        return None
    for text, score in live:
        if text != best[0] and best[1] - score < MARGIN and not (twin and twin(best[0], text)):
            return None
    return best[0]


def score(data: dict, floor: float, accept: Accept, fold: int | None = None, twin=None) -> dict:
    result = {}
    for name, rows in data.items():
        rows = [row for row in rows if fold is None or row[3] == fold]
        hits = [(decide(q, c, floor, accept, twin), right) for q, c, right, _ in rows]
        hits = [(found, right) for found, right in hits if found is not None]
        if name == "mock":
            wrong = sum(found != right for found, right in hits)
            result["mock_hit_pct"] = round(100 * len(hits) / len(rows), 1)
            result["mock_wrong_pct_of_hits"] = round(100 * wrong / max(len(hits), 1), 2)
        else:
            result[f"{name}_pct"] = round(100 * len(hits) / len(rows), 2)
    result["meets_targets"] = (result["mock_hit_pct"] >= 80 and result["mock_wrong_pct_of_hits"] <= 2
                               and result["held_pct"] <= 1 and result["negatives_pct"] <= 3)
    result["meets_qqp_targets"] = (result["mock_wrong_pct_of_hits"] <= 2 and result["held_pct"] <= 1
                                   and result["negatives_pct"] <= 3)
    return result


def cosine_and_guards(threshold: float) -> Accept:
    return lambda q, c, cos: cos >= threshold and guards.check(q, c) is None


def best_feasible(data: dict, grid: list[tuple[dict, float, Accept]]) -> dict | None:
    """The grid point with the most mock hits among those that meet the QQP targets."""
    best = None
    for params, floor, accept in grid:
        result = score(data, floor, accept)
        if result["meets_qqp_targets"] and (best is None or result["mock_hit_pct"] > best["mock_hit_pct"]):
            best = {**params, **result}
    return best


def measure_length(data: dict, texts: set[str]) -> dict | None:
    words = {text: len(guards.features(text).words) for text in texts}
    return best_feasible(data, [
        ({"long_from_words": cut, "short": short, "long": long}, min(short, long),
         lambda q, c, cos, cut=cut, short=short, long=long:
         cos >= (long if min(words[q], words[c]) >= cut else short) and guards.check(q, c) is None)
        for cut in (10, 12, 16, 20) for short in (0.92, 0.93, 0.94) for long in (0.80, 0.82, 0.84, 0.86, 0.88)])


def measure_agree(data: dict) -> dict:
    tokens = TokenVectors()
    signals = {"content_jaccard": (lambda a, b: jaccard(content_words(a), content_words(b)), (0.4, 0.5, 0.6, 0.7)),
               "trigram_jaccard": (lambda a, b: jaccard(trigrams(a), trigrams(b)), (0.4, 0.5, 0.6, 0.7)),
               "bertscore_f1": (tokens.f1, (0.95, 0.96, 0.97))}
    report = {}
    for name, (signal, levels) in signals.items():
        report[name] = {
            f"example_high_0.92_low_0.86_level_{levels[1]}": score(data, 0.86, _agree(signal, 0.92, 0.86, levels[1])),
            "best_in_sample": best_feasible(data, [
                ({"high": high, "low": low, "level": level}, low, _agree(signal, high, low, level))
                for high in (0.92, 0.93, 0.94, 0.95) for low in (0.84, 0.86, 0.88) for level in levels])}
    return report


def measure_novel(data: dict) -> dict:
    """The overlap-dependent threshold on all the data, then tuned on one half of every set
    and reported on the other, beside the plain threshold tuned the same way."""
    shared: dict[tuple[str, str], float] = {}

    def novel(low: float, high: float) -> Accept:
        def accept(q: str, c: str, cos: float) -> bool:
            if (q, c) not in shared:
                shared[q, c] = overlap(content_words(q), content_words(c))
            return cos >= low + (high - low) * shared[q, c] and guards.check(q, c) is None
        return accept

    report: dict = {"all_data": {f"{low}-0.93": score(data, low, novel(low, 0.93)) for low in (0.84, 0.86, 0.88)},
                    "folds": []}
    for fold in (0, 1):
        half = {name: [row for row in rows if row[3] == fold] for name, rows in data.items()}
        tuned = best_feasible(half, [({"low": round(low, 2), "high": round(high, 2)}, low, novel(low, high))
                                     for low in np.arange(0.80, 0.90, 0.01) for high in np.arange(0.90, 1.0, 0.01)])
        plain = best_feasible(half, [({"threshold": round(t, 3)}, t, cosine_and_guards(t))
                                     for t in np.arange(0.88, 0.97, 0.005)])
        report["folds"].append({"tuned_on": fold, "novel": tuned, "plain": plain, "reported_on_the_other_half": {
            "novel": score(data, tuned["low"], novel(tuned["low"], tuned["high"]), 1 - fold),
            "plain": score(data, plain["threshold"], cosine_and_guards(plain["threshold"]), 1 - fold)}})
    return report


def measure_twins(data: dict, table: dict[str, np.ndarray]) -> dict:
    def twin(a: str, b: str) -> bool:
        return float(table[a] @ table[b]) >= 0.95 and guards.check(a, b) is None
    return {t: score(data, t, cosine_and_guards(t), twin=twin) for t in (0.90, 0.92)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SHARED))
    parser.add_argument("--vectors", required=True, help="the int8 vectors' .npz (eval.py --vectors)")
    parser.add_argument("--fp32-vectors", help="the float vectors' .npz (eval.py --embedder fp32 --vectors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    mock, qqp, negatives = load(Path(args.source))
    texts = {t.strip() for x in mock for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in qqp for t in (x["origin"], x["similar"])}
    texts |= {t.strip() for x in negatives for t in (x["text_a"], x["text_b"])}
    _, table = embed_table(texts, True, args.vectors)
    data = sets(table, mock, qqp, negatives, args.seed)
    report: dict = {"plain": {t: score(data, t, cosine_and_guards(t)) for t in (0.82, 0.85, 0.88, 0.90, 0.92)}}
    show("plain", report["plain"])
    if args.fp32_vectors:
        _, floats = embed_table(texts, False, args.fp32_vectors)
        float_data = sets(floats, mock, qqp, negatives, args.seed)
        report["fp32"] = {t: score(float_data, t, cosine_and_guards(t)) for t in (0.90, 0.92, 0.925)}
        show("fp32", report["fp32"])
    report["length_best_in_sample"] = measure_length(data, texts)
    show("length", {"best": report["length_best_in_sample"]})
    for name, measure in (("agree", measure_agree), ("novel", measure_novel),
                          ("twins", lambda data: measure_twins(data, table))):
        report[name] = measure(data)
        show(name, report[name])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


def _agree(signal: Callable[[str, str], float], high: float, low: float, level: float) -> Accept:
    return lambda q, c, cos: (cos >= high or (cos >= low and signal(q, c) >= level)) and guards.check(q, c) is None


def show(name: str, rows: dict) -> None:
    print(f"== {name}")
    for key, value in rows.items():
        print(f"  {key}: {json.dumps(value, default=str)}", flush=True)


if __name__ == "__main__":
    main()

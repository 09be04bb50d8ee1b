"""Scores of a narration transcript against reference text, per second and overall.

chrF (character n-gram F-score, sacrebleu's standard implementation and signature) is the text
metric: one second of narration is a handful of words, where word n-gram metrics such as BLEU
mostly find no 3- or 4-gram match and collapse to 0, while character n-grams still credit
"cup" for "cups" and near-synonymous phrasing; sacrebleu makes the number reproducible
(its signature names the exact settings). StreamingVLM itself is judged by an LLM, which a
training box cannot run offline; chrF is the cheap, deterministic proxy.

Silence agreement is the share of seconds where the model and the reference agree on whether
anything was said: a narrator that talks all the time, or never, scores low on it whatever its
words.
"""

from __future__ import annotations

from collections.abc import Sequence


def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def second_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one second (0-100). Both silent is full agreement (100); one silent is 0."""
    if not hypothesis.strip() and not reference.strip():
        return 100.0
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    return float(_chrf().sentence_score(hypothesis, [reference]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus chrF over the seconds whose reference has words, and sacrebleu's signature
    (NaN and no signature when the reference never speaks).

    Seconds the reference leaves silent are scored by silence agreement instead (chrF of two
    empty strings means nothing).
    """
    pairs = [(h, r) for h, r in zip(hypotheses, references, strict=True) if r.strip()]
    if not pairs:
        return float("nan"), ""
    metric = _chrf()
    score = metric.corpus_score([h for h, _ in pairs], [[r for _, r in pairs]])
    return float(score.score), str(metric.get_signature())


def silence_agreement(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share of seconds where both are silent or both have words."""
    if not hypotheses:
        return float("nan")
    same = sum((not h.strip()) == (not r.strip())
               for h, r in zip(hypotheses, references, strict=True))
    return same / len(hypotheses)


def score_transcript(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Every score of a transcript (lists aligned per second)."""
    chrf, signature = corpus_chrf(hypotheses, references)
    return {
        "chrf": chrf,
        "chrf_signature": signature,
        "silence_agreement": silence_agreement(hypotheses, references),
        "seconds": len(hypotheses),
        "reference_spoken_seconds": sum(bool(r.strip()) for r in references),
        "model_spoken_seconds": sum(bool(h.strip()) for h in hypotheses),
    }

"""Watch questions: p(yes) of a yes/no question, scored from a stream's cache without
disturbing it.

The question goes in as ``ask`` puts it (``asking.py``): ``Time=a-bs {question}`` in a user
turn of its own for the period after the newest narrated second, without video, up to the
assistant header. Nothing is generated: one forward pass over that turn gives the model's
distribution of the assistant's first token, and StreamingVLM puts a question's answer first
in the second's text. p(yes) is the probability of the tokens that begin "Yes" over that of
the tokens that begin "Yes" or "No" (each with and without a leading space, capitalized or
not; a token that begins both words, such as a lone space, counts for neither). The raw
logits are read: no repetition penalty, no sampling, so the same memory gives the same p(yes).
The question's tokens are then cut off the cache and the policy again, exactly as after an
``ask``: cache contents, positions and policy state are as before.

Cost: one prefill of the question turn (about 10 + the question's tokens) over the cache; no
decoding step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from svlm_ros.engine.asking import checked_question

YES_WORDS = ("Yes", " Yes", "yes", " yes")
NO_WORDS = ("No", " No", "no", " no")


@dataclass(frozen=True)
class WatchAnswer:
    """One evaluation of a watch question.

    Attributes:
        probability: p(yes) in [0, 1], against "no" only.
        answer_mass: How much of the first token's distribution the yes and no tokens hold
            together (near 0: the model does not take it as a yes/no question).
        question_tokens: Tokens of the question as asked (chat framing included).
        seconds: Time of the evaluation (the forward pass and the read of its logits).
    """

    probability: float
    answer_mass: float
    question_tokens: int
    seconds: float

    @property
    def answer(self) -> bool:
        """Yes when p(yes) is at least one half."""
        return self.probability >= 0.5


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The first tokens of the yes words and of the no words; one that begins both is in
    neither.

    Raises:
        ValueError: the tokenizer's first tokens cannot tell yes from no.
    """
    def first_tokens(words: tuple[str, ...]) -> set[int]:
        return {ids[0] for ids in (tokenizer.encode(w, add_special_tokens=False) for w in words)
                if ids}

    yes, no = first_tokens(YES_WORDS), first_tokens(NO_WORDS)
    both = yes & no
    yes, no = sorted(yes - both), sorted(no - both)
    if not yes or not no:
        raise ValueError("the tokenizer's first tokens cannot tell 'Yes' from 'No'")
    return yes, no


@torch.inference_mode()
def yes_probability(session, question: str) -> WatchAnswer:
    """p(yes) of ``question`` from ``session``'s memory (a ``StreamingSession``, serialized by
    the caller like its rounds and asks); the stream is left exactly as it was.

    Raises:
        ValueError: empty question, nothing seen yet, or a tokenizer without distinct yes and
            no tokens.
        QuestionTooLong: the question exceeds ``max_question_tokens``.
        GenerationInterrupted: the session was interrupted.
    """
    question, ids = checked_question(session, question)
    yes_ids, no_ids = answer_token_ids(session.format.tokenizer)
    session.check_interrupted()
    t0 = time.perf_counter()
    period = session.config.period
    start = session.policy.rounds[-1].stream_second + period
    length = session.cache.length
    try:
        logits = session.feed(session.layout.render_question(
            question, start, start + period, session.policy.next_position))
        probabilities = torch.softmax(logits.float(), dim=-1)
        yes = float(probabilities[yes_ids].sum())
        no = float(probabilities[no_ids].sum())
    finally:
        session.cache.truncate(length)
        session.policy.truncate(length)
    mass = yes + no
    probability = yes / mass if mass > 0 else 0.5
    return WatchAnswer(probability, mass, len(ids), time.perf_counter() - t0)

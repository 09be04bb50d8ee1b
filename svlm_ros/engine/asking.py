"""Answering a question from a stream's cache without disturbing the stream (``ask``).

The question is put as StreamingVLM was trained to take one, ``Time=a-bs {question}``, in a
user turn of its own for the period after the newest narrated second (asked now, it belongs to
the coming second), without video. The answer is what the model says before its first newline
(in training the answer comes first in a second's text, then a newline, then the narration),
decoded greedily: the same memory gives the same answer. Question and answer are appended to
the cache and cut off again, so the cache contents, positions and policy state afterwards are
exactly as before.
"""

from __future__ import annotations

import time

from svlm_ros.engine.prompt_format import split_answer
from svlm_ros.engine.stop_rule import StopRule
from svlm_ros.engine.stream_config import Answer
from svlm_ros.engine.turn_decoding import decode_turn


def checked_question(session, question: str) -> tuple[str, list[int]]:
    """``(question stripped, its ids)`` for a question put to ``session``'s memory between
    seconds (``ask``, watch questions).

    Raises:
        ValueError: empty question, or nothing seen yet.
        QuestionTooLong: the question exceeds ``max_question_tokens``.
    """
    if not question or not question.strip():
        raise ValueError("question is empty")
    if session.policy.length == 0 or not session.policy.rounds:
        raise ValueError("no frames have been narrated yet; nothing to answer from")
    question = question.strip()
    return question, session.check_question(question)


def answer_from_cache(session, question: str, max_new_tokens: int | None = None) -> Answer:
    """Answer ``question`` from ``session``'s memory (a ``StreamingSession``, serialized by
    the caller like its rounds).

    Raises:
        ValueError: empty question, or nothing seen yet.
        QuestionTooLong: the question exceeds ``max_question_tokens``.
    """
    question, ids = checked_question(session, question)
    config = session.config
    budget = min(max_new_tokens or config.max_answer_tokens, config.max_answer_tokens)
    rule = session.answer_stop_rule
    if budget != rule.budget:
        rule = StopRule(budget, rule.end_of_turn_id, rule.end_ids, rule.newline_ids)
    session.check_interrupted()
    t0 = time.perf_counter()
    length = session.cache.length
    start = session.policy.rounds[-1].stream_second + config.period
    record, session.record_logits = session.record_logits, False
    try:
        logits = session.feed(session.layout.render_question(
            question, start, start + config.period, session.policy.next_position))
        turn = decode_turn(session, logits, rule, session.answer_chooser)
    finally:
        session.cache.truncate(length)
        session.policy.truncate(length)
        session.record_logits = record
    decoded = session.format.tokenizer.decode(turn.text_ids, skip_special_tokens=True)
    answer, _narration = split_answer(decoded)
    return Answer(answer, len(ids), turn.chosen_tokens, time.perf_counter() - t0)

"""The ``previous text`` a replay's cache held when a question came, rebuilt from its transcript.

A memory question is wrong for one of two reasons: the cache no longer holds the answer (the
leaving was cut out of the text window, or never narrated), or it holds it and the narrator
does not read it. The replay's transcript and answers give every second's words; the same
rules as the engine and the SFT chunker (``moved_ids``, ``cut_previous_text``) turn them into
the text the cache held, seconds inside the vision window still being rounds of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from svlm_ros.engine.cache_policy import CachePolicyConfig, cut_previous_text
from svlm_ros.engine.prompt_format import PromptFormat
from svlm_ros.sim.questions import SIDES, MemoryQuestion
from svlm_ros.sim.world import parse_events
from svlm_training.chunking import moved_ids, narration_ids


def text_in_cache(prompt_format: PromptFormat, settings: dict, words: Sequence[str],
                  answers: dict[int, str], second: int) -> str:
    """What the cache of a replay held as text right after stream second ``second``: the
    ``previous text`` (every earlier second's words, cut as the cache cuts them) and then the
    words of the seconds still in the vision window.

    Args:
        prompt_format: The replay's format (its tokenizer, prompts and initial previous text).
        settings: The replay's ``scores.json`` ``settings`` (``max_new_tokens``, ``cache``).
        words: Each stream second's narration, from second 0.
        answers: Stream second -> the answer given in that second's round.
        second: The last second narrated.
    """
    cache = settings["cache"]
    policy = CachePolicyConfig(text_sink_tokens=cache["text_sink_tokens"],
                               text_window_tokens=cache["text_window_tokens"])
    first_in_window = max(0, second + 1 - cache["vision_window_seconds"])
    ids = list(prompt_format.initial_previous_text_ids())
    for earlier, text in enumerate(words[:first_in_window]):
        ids += moved_ids(prompt_format, narration_ids(
            prompt_format, text, settings["max_new_tokens"], answers.get(earlier, "")))
    previous = prompt_format.tokenizer.decode(cut_previous_text(ids, policy))
    return " ".join([previous, *words[first_in_window:second + 1]])


def latest_leaving_answers(question: MemoryQuestion, text: str) -> bool:
    """Whether the latest leaving that ``text`` narrates (on the question's side, if it names
    one) is the shape the question asks about: the text could answer it."""
    side = next((s for s in SIDES if question.question.endswith(f"to the {s}?")), "")
    side = {"top": "up", "bottom": "down"}.get(side, side)
    leavings = [event for event in parse_events(text)
                if event[0] == "leaves" and (not side or event[3] == side)]
    return bool(leavings) and question.answer in leavings[-1][1:3]

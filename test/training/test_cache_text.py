"""The text a replay's cache held when a question came (``svlm_training.cache_text``), rebuilt
with the committed sim narrator's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from svlm_training.cache_text import latest_leaving_answers, text_in_cache
from transformers import AutoProcessor

from svlm_ros.engine.prompt_format import PromptFormat
from svlm_ros.sim.questions import MemoryQuestion

MODEL = Path(__file__).resolve().parents[2] / "config" / "sim_narrator"


@pytest.fixture(scope="module")
def prompt_format() -> PromptFormat:
    return PromptFormat(AutoProcessor.from_pretrained(MODEL).tokenizer, "You are a helpful "
                        "assistant.", "", "")  # fmt: skip


def settings(sink: int, window: int, vision: int = 8) -> dict:
    return {"max_new_tokens": 16, "cache": {"text_sink_tokens": sink, "text_window_tokens":
            window, "vision_window_seconds": vision}}  # fmt: skip


WORDS = ["a red circle enters from the top", "", "the red circle leaves to the left"] \
    + [""] * 10 + ["a blue square enters from the right", "the blue square moves up"] \
    + [f"the blue square moves {d}" for d in ("down", "up", "down", "up")] + [""] * 20


def test_seconds_in_the_vision_window_stay_words_and_older_ones_are_cut_as_the_cache_cuts(
        prompt_format):
    last = len(WORDS) - 1
    # The text window keeps the newest ~3 sentences, the sink (0 here) none of the first.
    text = text_in_cache(prompt_format, settings(0, 24), WORDS, {}, last)
    assert "the blue square moves up" in text and "red circle" not in text
    # A large window keeps everything, in order.
    text = text_in_cache(prompt_format, settings(64, 256), WORDS, {}, last)
    assert text.index("red circle leaves") < text.index("blue square enters")
    # Seconds inside the vision window are rounds, not yet previous text: a window reaching
    # back past every word keeps them all as words after an empty previous text.
    text = text_in_cache(prompt_format, settings(0, 0, vision=len(WORDS)), WORDS, {}, last)
    assert "red circle leaves to the left" in text
    assert "red circle" not in text_in_cache(prompt_format, settings(0, 0), WORDS, {}, last)
    # An answer given in a round moves with that round's words.
    text = text_in_cache(prompt_format, settings(64, 256), WORDS, {5: "green"}, last)
    assert "green" in text


def test_the_latest_leaving_in_the_text_decides_whether_it_can_answer():
    text = "the red circle leaves to the left the blue square leaves to the right"
    last_colour = MemoryQuestion(60, "What colour was the last shape that left?", "blue", 50)
    assert latest_leaving_answers(last_colour, text)
    assert not latest_leaving_answers(
        MemoryQuestion(60, "What colour was the last shape that left?", "red", 50), text)
    # The side narrows it to the leavings on that side.
    assert latest_leaving_answers(
        MemoryQuestion(60, "What colour was the shape that left to the left?", "red", 50), text)
    assert not latest_leaving_answers(last_colour, "a blue square enters from the top")

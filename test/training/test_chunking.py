"""Chunk windows, the previous-text cut, the loss mask, and the chunk == the streaming cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bag_factory import frame_for
from svlm_training.chunking import (
    IGNORE,
    ChunkConfig,
    ChunkRenderer,
    RoundInput,
    moved_ids,
    narration_ids,
    plan_chunks,
    window_starts,
)

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import SecondOfFrames
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.prompt_format import (
    DEFAULT_INSTRUCTION,
    DEFAULT_SYSTEM_PROMPT,
    END_MARKER,
)
from svlm_ros.engine.round_layout import (
    ASSISTANT,
    ASSISTANT_HEADER,
    CLOSE,
    INSTRUCTION,
    PREVIOUS_TEXT,
    PREVIOUS_TEXT_CLOSE,
    QUESTION,
    SINK,
    TIME,
    VIDEO,
)
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession

MAX_PIXELS, MIN_PIXELS = 6272, 3136
WORDS = ["the card is red", "", "", "now it turns green and the bar moves to the right side "
         "of the frame quickly while the robot watches", "", "blue", "", "yellow card"]


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return load_model(tiny_model_path)


def renderer_for(loaded, **config) -> ChunkRenderer:
    return ChunkRenderer(loaded.processor, loaded.model.config, ChunkConfig(**config),
                         max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS, fps=2.0)


#: Questions asked in a few seconds of the stream: (question, answer). At most one question is
#: in any 4-second vision window (the session holds one at a time).
QUESTIONS = {1: ("what colour is the card?", "red"), 5: ("is it blue?", "yes it is")}


def rounds(first: int, count: int, questions: bool = False) -> list[RoundInput]:
    """Seconds ``first``... of the test stream (with ``QUESTIONS`` when ``questions``)."""
    out = []
    for s in range(first, first + count):
        question, answer = QUESTIONS.get(s, ("", "")) if questions else ("", "")
        out.append(RoundInput(float(s), float(s + 1), [frame_for(s), frame_for(s + 0.5)],
                              WORDS[s % len(WORDS)], question, answer))
    return out


def decode(renderer: ChunkRenderer, ids) -> str:
    return renderer.format.tokenizer.decode(list(ids))


def trained_runs(sample) -> list[tuple[int, int]]:
    """``[start, end)`` of every run of consecutive trained tokens."""
    trained = (sample.labels != IGNORE).tolist() + [False]
    runs, start = [], None
    for index, flag in enumerate(trained):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    return runs


@pytest.mark.parametrize(
    ("seconds", "chunk", "overlap", "expected"),
    [(0, 24, 12, []), (5, 24, 12, [0]), (24, 24, 12, [0]), (25, 24, 12, [0, 12]),
     (36, 24, 12, [0, 12]), (37, 24, 12, [0, 12, 24]), (48, 24, 0, [0, 24]),
     (10, 4, 3, [0, 1, 2, 3, 4, 5, 6])],
)
def test_window_starts(seconds, chunk, overlap, expected):
    assert window_starts(seconds, chunk, overlap) == expected


@pytest.mark.parametrize("seconds", range(1, 60))
def test_windows_cover_every_second_and_overlap_as_configured(seconds):
    starts = window_starts(seconds, 24, 12)
    windows = [range(s, min(s + 24, seconds)) for s in starts]
    assert set().union(*map(set, windows)) == set(range(seconds))
    for before, after in zip(windows, windows[1:], strict=False):
        assert after.start - before.start == 12  # the stride
        assert len(set(before) & set(after)) == 12  # the overlap
        assert after.stop > before.stop  # every window brings new seconds


def test_chunks_never_cross_episodes():
    chunks = plan_chunks([range(0, 30), range(30, 35)], ChunkConfig(24, 12))
    assert [(c.episode, c.rows) for c in chunks] == [
        (0, range(0, 24)), (0, range(12, 30)), (1, range(30, 35))]
    assert [c.starts_stream for c in chunks] == [True, False, True]
    assert chunks[1].first_row == 0 and chunks[2].first_row == 30


def test_chunk_config_is_validated():
    with pytest.raises(ValueError, match="overlap_seconds"):
        ChunkConfig(chunk_seconds=4, overlap_seconds=4)
    with pytest.raises(ValueError, match="chunk_seconds"):
        ChunkConfig(chunk_seconds=0, overlap_seconds=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ChunkConfig(max_new_tokens=1)


def test_chunk_config_defaults_are_the_engines_without_an_instruction():
    """StreamingVLM trained without an instruction; the sink and previous text are the
    engine's defaults."""
    config = ChunkConfig()
    assert config.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert config.instruction == ""
    assert config.previous_text == StreamConfig().previous_text == ""
    assert config.max_new_tokens == StreamConfig().max_new_tokens
    assert config.cache_policy == CachePolicyConfig(
        vision_window_seconds=CachePolicyConfig().vision_window_seconds)


def test_narration_ids_end_with_the_marker_and_fit_the_budget(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    marker = fmt.end_marker_ids()
    assert marker == fmt.encode_plain(END_MARKER)
    # A silent second is the marker alone; words keep their leading space.
    assert narration_ids(fmt, "", 20) == marker == fmt.encode_plain(" ...")
    assert narration_ids(fmt, "  the card  ", 20) == fmt.encode_plain(" the card" + END_MARKER)
    assert narration_ids(fmt, "the card", 20) == fmt.narration_ids("the card")
    # An answer comes first, before a newline.
    assert narration_ids(fmt, "the card", 20, "red") == fmt.encode_plain("red\n the card ...")
    # The budget counts the model's own <|im_end|>: the text gets max_new_tokens - 1 tokens.
    long_text = WORDS[3]
    assert len(fmt.encode_plain(" " + long_text + END_MARKER)) > 7
    ids = narration_ids(fmt, long_text, 8)
    assert len(ids) <= 7 and ids[-len(marker):] == marker
    assert decode(renderer, ids).endswith(" ...")
    # Whole words are kept, as many as fit.
    words = long_text.split()
    kept = next(n for n in range(len(words), -1, -1)
                if len(fmt.narration_ids(" ".join(words[:n]))) <= 7)
    assert kept > 0
    assert ids == fmt.narration_ids(" ".join(words[:kept]))
    assert len(fmt.narration_ids(" ".join(words[:kept + 1]))) > 7
    # Text that fits exactly is kept whole; one token more is cut.
    fitting = fmt.narration_ids(" ".join(words[:kept]))
    assert narration_ids(fmt, " ".join(words[:kept]), len(fitting) + 1) == fitting
    assert len(narration_ids(fmt, " ".join(words[:kept]), len(fitting))) < len(fitting)
    # With an answer, the answer is kept first and the words are cut.
    answered = narration_ids(fmt, long_text, 12, "red")
    assert len(answered) <= 11 and decode(renderer, answered).startswith("red\n ")
    assert answered[-len(marker):] == marker
    # A word too long for the budget is cut mid-word rather than lost to silence.
    word = "abcdefghijklmnopqrstuvwxyz"
    cut = narration_ids(fmt, word, 6)
    assert len(cut) == 5 and cut[-len(marker):] == marker
    assert cut[:-len(marker)] == fmt.encode_plain(" " + word)[:5 - len(marker)]
    # User text stays characters: a typed <|im_end|> cannot end the turn.
    assert fmt.end_of_turn_id not in narration_ids(fmt, "stop <|im_end|> now", 20)


def test_what_moves_to_the_previous_text_is_the_words_without_the_marker(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    assert moved_ids(fmt, renderer.assistant_ids("")) == []
    assert moved_ids(fmt, renderer.assistant_ids("the card")) == fmt.encode_plain(" the card")
    assert decode(renderer, moved_ids(fmt, renderer.assistant_ids("the card", "red"))) == (
        "red\n the card")


def test_previous_text_is_cut_by_the_cache_policy(loaded):
    renderer = renderer_for(loaded, text_sink_tokens=5, text_window_tokens=7)
    history = [WORDS[i % len(WORDS)] for i in range(12)]
    everything = [t for text in history
                  for t in moved_ids(renderer.format, renderer.assistant_ids(text))]
    assert len(everything) > 12
    assert renderer.previous_text_ids(history) == everything[:5] + everything[-7:]
    assert renderer.previous_text_ids(history[:1]) == moved_ids(
        renderer.format, renderer.assistant_ids(history[0]))


def test_the_previous_text_holds_the_words_of_earlier_seconds_without_markers(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    history = ["the card is red", "", "  now green ", "", "blue"]
    previous = renderer.previous_text_ids(history)
    assert previous == fmt.encode_plain(" the card is red now green blue")
    assert decode(renderer, previous) == " the card is red now green blue"
    assert not set(fmt.end_marker_ids()) & set(previous)
    # A second that answered a question moves its answer with its words.
    assert decode(renderer, renderer.previous_text_ids(["red", ("the card", "yes")])) == (
        " redyes\n the card")
    # Silence moves nothing.
    assert renderer.previous_text_ids(["", "", ""]) == []
    # In the chunk, it is the previous-text turn, closed before the first round.
    sample = renderer.render(rounds(5, 2), history, starts_stream=False)
    spans = sample.rendered.spans
    assert [s.label for s in spans[:4]] == [SINK, PREVIOUS_TEXT, PREVIOUS_TEXT_CLOSE, TIME]
    text = decode(renderer, sample.input_ids[:spans[2].end])
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>previous text\n the card is red now green blue<|im_end|>\n")


def test_an_initial_previous_text_comes_first_and_is_cut_with_the_words(loaded):
    renderer = renderer_for(loaded, previous_text="A kitchen.", text_sink_tokens=3,
                            text_window_tokens=4)
    fmt = renderer.format
    initial = fmt.encode_plain("A kitchen.")
    assert len(initial) > 3
    words = fmt.encode_plain(" the card is red")
    assert renderer.previous_text_ids(["the card is red"]) == (initial + words)[:3] + (
        initial + words)[-4:]
    # A chunk that starts the stream holds it whole, as the cache before its first eviction.
    sample = renderer.render(rounds(0, 1), [], starts_stream=True)
    span = next(s for s in sample.rendered.spans if s.label == PREVIOUS_TEXT)
    assert sample.input_ids[span.start:span.end].tolist() == initial


def test_loss_is_only_on_assistant_words_markers_and_end_of_turn(loaded):
    renderer = renderer_for(loaded, max_new_tokens=8)
    sample = renderer.render(rounds(2, 4), [WORDS[0], WORDS[1]], starts_stream=False)
    rendered = sample.rendered
    labels = sample.labels
    trained = labels != IGNORE
    # Labels, where set, are the input ids themselves (the model shifts them internally).
    assert torch.equal(labels[trained], sample.input_ids[trained])
    for span in rendered.spans:
        piece = trained[span.start:span.end]
        if span.label == ASSISTANT:
            assert piece.all()
        elif span.label == CLOSE:
            assert piece.tolist() == [True] + [False] * (span.length - 1)
            assert rendered.ids[span.start] == renderer.format.end_of_turn_id
        else:
            assert span.label in (SINK, PREVIOUS_TEXT, PREVIOUS_TEXT_CLOSE, TIME, VIDEO,
                                  ASSISTANT_HEADER)
            assert not piece.any(), span
    expected = [renderer.assistant_ids(r.text) for r in rounds(2, 4)]
    assert sample.trained_tokens == sum(len(ids) + 1 for ids in expected)
    text = decode(renderer, sample.input_ids[trained])
    assert text == "<|im_end|>".join(decode(renderer, ids) for ids in expected) + "<|im_end|>"
    assert sample.video_grid_thw.tolist() == [[1, 4, 4]] * 4
    assert sample.position_ids.shape == (3, sample.tokens)
    # Every trained run starts right after an assistant header and ends with its <|im_end|>.
    header = renderer.format.assistant_header_ids()
    runs = trained_runs(sample)
    assert len(runs) == 4
    for (start, end), ids in zip(runs, expected, strict=True):
        assert sample.input_ids[start - len(header):start].tolist() == header
        assert sample.input_ids[start:end].tolist() == ids + [renderer.format.end_of_turn_id]


def test_a_silent_second_is_labelled_marker_then_end_of_turn_and_never_the_newline(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    assert WORDS[1] == "" and WORDS[0]
    sample = renderer.render(rounds(0, 2), [], starts_stream=True)
    runs = trained_runs(sample)
    assert len(runs) == 2
    silent = sample.labels[runs[1][0]:runs[1][1]].tolist()
    assert silent == fmt.end_marker_ids() + [fmt.end_of_turn_id]
    assert decode(renderer, silent) == " ...<|im_end|>"
    spoken = sample.labels[runs[0][0]:runs[0][1]].tolist()
    assert decode(renderer, spoken) == " the card is red ...<|im_end|>"
    # The newline after each <|im_end|> is input, never a label.
    newline = fmt.encode("\n")
    assert len(newline) == 1
    for _start, end in runs:
        assert sample.input_ids[end].item() == newline[0]
        assert sample.labels[end].item() == IGNORE
    # The last token of the chunk is the newline that closes the last turn: not labelled.
    assert sample.input_ids[-1].item() == newline[0] and sample.labels[-1].item() == IGNORE


def test_a_question_follows_the_time_text_and_its_answer_comes_first(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    stream = rounds(4, 3, questions=True)
    assert stream[1].question == "is it blue?" and stream[1].text == "blue"
    sample = renderer.render(stream, ["a", "b", "c", "d"], starts_stream=False)
    spans = sample.rendered.spans
    labels = [s.label for s in spans]
    assert labels.count(QUESTION) == 1
    index = labels.index(QUESTION)
    assert labels[index - 1] == TIME and labels[index + 1] == VIDEO
    question = spans[index]
    assert decode(renderer, sample.input_ids[question.start:question.end]) == " is it blue?"
    time = spans[index - 1]
    assert decode(renderer, sample.input_ids[time.start:question.end]) == (
        "<|im_start|>user\nTime=5.0-6.0s is it blue?")
    # Nothing of the question is trained; the answer, words, marker and <|im_end|> are.
    assert (sample.labels[question.start:question.end] == IGNORE).all()
    runs = trained_runs(sample)
    assert len(runs) == 3
    answered = sample.labels[runs[1][0]:runs[1][1]].tolist()
    assert answered == fmt.narration_ids("blue", "yes it is") + [fmt.end_of_turn_id]
    assert decode(renderer, answered) == "yes it is\n blue ...<|im_end|>"
    # A round without a question has no question span or answer.
    assert decode(renderer, sample.labels[runs[0][0]:runs[0][1]].tolist()) == (
        " ...<|im_end|>")
    with pytest.raises(ValueError, match="answer"):
        RoundInput(0.0, 1.0, [], "words", question="why?")
    with pytest.raises(ValueError, match="question"):
        RoundInput(0.0, 1.0, [], "words", answer="because")


def test_a_chunk_that_starts_the_stream_has_no_previous_text(loaded):
    renderer = renderer_for(loaded)
    with pytest.raises(ValueError, match="no previous text"):
        renderer.render(rounds(0, 2), ["earlier"], starts_stream=True)
    sample = renderer.render(rounds(0, 2), [], starts_stream=True)
    assert [s.label for s in sample.rendered.spans][:3] == [SINK, PREVIOUS_TEXT_CLOSE, TIME]
    # Training chunks have no instruction by default, as StreamingVLM trained.
    assert INSTRUCTION not in [s.label for s in sample.rendered.spans]


def test_the_instruction_follows_the_video_of_the_streams_first_second_only(loaded):
    renderer = renderer_for(loaded, instruction=DEFAULT_INSTRUCTION)
    sample = renderer.render(rounds(0, 3), [], starts_stream=True)
    spans = sample.rendered.spans
    labels = [s.label for s in spans]
    assert labels.count(INSTRUCTION) == 1
    index = labels.index(INSTRUCTION)
    assert labels[index - 1] == VIDEO and labels[index + 1] == ASSISTANT_HEADER
    assert labels.index(INSTRUCTION) < labels.index(ASSISTANT)  # in the first round
    span = spans[index]
    assert decode(renderer, sample.input_ids[span.start:span.end]) == DEFAULT_INSTRUCTION
    assert (sample.labels[span.start:span.end] == IGNORE).all()
    # A later chunk: the instruction left the cache with the stream's first second.
    later = renderer.render(rounds(1, 2), [WORDS[0]], starts_stream=False)
    assert INSTRUCTION not in [s.label for s in later.rendered.spans]


@pytest.mark.parametrize(
    ("total", "instruction", "previous_text"),
    [(3, DEFAULT_INSTRUCTION, ""), (9, DEFAULT_INSTRUCTION, ""), (3, "", "A kitchen."),
     (9, "", "A kitchen."), (12, "", "")],
)
def test_a_chunk_is_exactly_what_the_streaming_cache_holds(loaded, total, instruction,
                                                          previous_text):
    """Teacher-force the engine's own session through ``total`` seconds (questions asked in
    some); its bounded cache then holds the sink, the cut previous text (an initial one and
    the words moved there as seconds were evicted) and the last ``window`` rounds. The chunk of
    those rounds, with all earlier seconds as history, renders the same ids at the same
    positions."""
    window = 4
    config = StreamConfig(
        max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS, max_new_tokens=8,
        instruction=instruction, previous_text=previous_text,
        cache=CachePolicyConfig(text_sink_tokens=4, text_window_tokens=5,
                                vision_window_seconds=window),
        sampling=SamplingConfig(temperature=0.0),
    )
    session = StreamingSession(loaded, config)
    renderer = renderer_for(loaded, max_new_tokens=8, text_sink_tokens=4, text_window_tokens=5,
                            instruction=instruction, previous_text=previous_text)
    stream = rounds(0, total, questions=True)
    evicted = 0
    for second, item in enumerate(stream):
        period = SecondOfFrames(index=second, epoch=session.sampler.epoch, start=item.start,
                                end=item.end, end_stamp=item.end, frames=list(item.frames),
                                received=2)
        forced = renderer.assistant_ids(item.text, item.answer)
        result = session.run_round(period, forced_ids=forced, question=item.question)
        assert result.answer == item.answer
        evicted += result.evicted_tokens > 0
    kept = min(window, total)
    history = [(item.text, item.answer) for item in stream[: total - kept]]
    sample = renderer.render(stream[total - kept:], history, starts_stream=total <= window)
    assert session.policy.token_ids.tolist() == sample.input_ids.tolist()
    assert torch.equal(session.policy.positions, sample.position_ids)
    # Evictions happened, words moved and the previous text was cut, as the chunk's.
    assert (evicted > 0) == (total > window)
    assert session.policy.evicted_rounds == total - kept
    assert (session.policy.dropped_text_tokens > 0) == (total > window)
    previous = sum(s.length for s in sample.rendered.spans if s.label == PREVIOUS_TEXT)
    assert previous == session.policy.previous_text_tokens
    assert previous == (len(renderer.format.initial_previous_text_ids()) if total <= window
                        else 4 + 5)
    assert (INSTRUCTION in [s.label for s in sample.rendered.spans]) == (
        bool(instruction) and total <= window)


def test_rendering_a_dataset_chunk(tmp_path, build_dataset, loaded):
    from bag_factory import BagSpec, write_bag
    from svlm_training.dataset_format import SecondsDataset

    bag = write_bag(tmp_path / "bag", BagSpec(seconds=9, texts={0: "red", 5: "green"}))
    code, out = build_dataset([bag])
    assert code == 0
    data = SecondsDataset(out)
    renderer = renderer_for(loaded, chunk_seconds=4, overlap_seconds=2)
    chunks = plan_chunks(data.episodes(), renderer.config)
    assert [c.rows for c in chunks] == [range(0, 4), range(2, 6), range(4, 8), range(6, 9)]
    sample = renderer.render_chunk(data, chunks[1])
    direct = renderer.render(
        [RoundInput(data[r].start, data[r].end, list(data[r].frames), data[r].text)
         for r in range(2, 6)], ["red", ""], starts_stream=False)
    assert torch.equal(sample.input_ids, direct.input_ids)
    assert torch.equal(sample.position_ids, direct.position_ids)
    assert torch.equal(sample.pixel_values_videos, direct.pixel_values_videos)
    assert np.array_equal(sample.labels.numpy(), direct.labels.numpy())
    previous = next(s for s in sample.rendered.spans if s.label == PREVIOUS_TEXT)
    assert decode(renderer, sample.input_ids[previous.start:previous.end]) == " red"

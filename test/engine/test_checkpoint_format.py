"""The stream speaks the published StreamingVLM checkpoint's language, token for token.

A tiny model with the real Qwen2.5-VL vocabulary (``svlm-make-tiny --qwen-vocab``) streams 40
seconds, teacher-forced, through evictions of rounds, of the instruction and of previous text,
a silent stretch, a question asked in a second and a question asked between seconds. After
every round the cache must hold exactly the ids that StreamingVLM's rules give, which are
written out below as strings and rules (not with the engine's layout code):

- system turn ``You are a helpful assistant.``, then a turn of the role ``previous text``
  holding the initial context and, after it, the words of every second that left the vision
  window: a second's assistant text without its last token (the `` ...`` end marker), joined
  with nothing between them; of those, the first S and the last W tokens are kept;
- one user turn per second, ``Time=a-bs`` (one decimal), a question after it as `` {q}``, the
  video block, and on the stream's first second the instruction after the video; then the
  assistant header, the text ending in `` ...`` and ``<|im_end|>``, and the newline before the
  next turn;
- with a question the text starts with the answer and a newline.

The cache's 3-D positions must be those transformers' ``get_rope_index`` computes for the kept
ids from scratch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession

#: Ids of the published Qwen2 / Qwen2.5-VL vocabulary.
PUBLISHED_IDS = {
    "\n": [198], "user": [872], "assistant": [77091], " ...": [2503],
    "<|im_start|>": [151644], "<|im_end|>": [151645], "<|vision_start|>": [151652],
    "<|video_pad|>": [151656], "<|endoftext|>": [151643], "<|vision_end|>": [151653],
}

WINDOW, TEXT_SINK, TEXT_WINDOW = 4, 6, 12
SECONDS = 40
INSTRUCTION = "Commentate on this match"
CONTEXT = " A robot lab."
STREAM_QUESTION = (25, "Is a person here?", "Yes.")
ASKED_AFTER = 30
ASKED = "What colour was the cup?"
PHRASES = ["a red cup appears", "the arm moves left", "a person walks in",
           "the cup is lifted", "the door opens", "a blue box falls"]


def words_of(second: int) -> str:
    """The narration of each second: a silent stretch 10-19, words elsewhere."""
    return "" if 10 <= second < 20 else f"{PHRASES[second % len(PHRASES)]} {second}"


def assistant_text(second: int) -> str:
    words = words_of(second)
    text = (f" {words}" if words else "") + " ..."
    if second == STREAM_QUESTION[0]:
        text = f"{STREAM_QUESTION[2]}\n{text}"
    return text


def user_turn(second: int, video_tokens: int) -> str:
    question = f" {STREAM_QUESTION[1]}" if second == STREAM_QUESTION[0] else ""
    instruction = INSTRUCTION if second == 0 else ""
    return (f"<|im_start|>user\nTime={second:.1f}-{second + 1:.1f}s{question}"
            f"<|vision_start|>{'<|video_pad|>' * video_tokens}<|vision_end|>{instruction}"
            "<|im_end|>\n<|im_start|>assistant\n")


def expected_ids(tokenizer, newest: int, video_tokens: int) -> list[int]:
    """The reference's cache after the round of second ``newest``, by its rules."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    kept = range(max(0, newest - WINDOW + 1), newest + 1)
    previous = encode(CONTEXT)
    for gone in range(kept.start):
        previous += encode(assistant_text(gone))[:-1]  # the marker stays behind
    if len(previous) > TEXT_SINK + TEXT_WINDOW:
        previous = previous[:TEXT_SINK] + previous[-TEXT_WINDOW:]
    ids = encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>previous text\n") + previous + encode("<|im_end|>\n")
    for second in kept:
        ids += encode(user_turn(second, video_tokens) + assistant_text(second) + "<|im_end|>\n")
    return ids


@pytest.fixture(scope="module")
def loaded(qwen_vocab_model_path):
    return load_model(qwen_vocab_model_path, device="cpu", dtype="float32",
                      attn_implementation="sdpa")


def test_the_tokenizer_gives_the_published_ids(loaded):
    tokenizer = loaded.tokenizer
    assert len(tokenizer) == 151665
    for text, ids in PUBLISHED_IDS.items():
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
    # A time stamp splits its digits one by one, as the published tokenizer does.
    assert tokenizer.encode("Time=12.0-13.0s", add_special_tokens=False) == [
        1462, 28, 16, 17, 13, 15, 12, 16, 18, 13, 15, 82]


def _frames(rng, second: int) -> list[tuple[np.ndarray, float]]:
    return [(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8), 500.0 + second + k / 2)
            for k in range(2)]


def _rope_positions(session, ids: torch.Tensor, blocks: list) -> torch.Tensor:
    token_types = (ids[None] == session.format.video_pad_id).int() * 2
    positions, _ = session.model.model.get_rope_index(
        ids[None], mm_token_type_ids=token_types,
        video_grid_thw=torch.cat([b.grid_thw for b in blocks]),
        second_per_grid_ts=torch.tensor([b.second_per_grid for b in blocks]))
    return positions[:, 0, :]


def test_a_teacher_forced_stream_holds_exactly_the_reference_framing(loaded):
    config = StreamConfig(
        max_pixels=56 * 84, min_pixels=28 * 28, max_new_tokens=12, previous_text=CONTEXT,
        cache=CachePolicyConfig(text_sink_tokens=TEXT_SINK, text_window_tokens=TEXT_WINDOW,
                                vision_window_seconds=WINDOW),
        sampling=SamplingConfig(temperature=0.0, repetition_penalty=1.0), decode_path="eager")
    assert config.system_prompt == "You are a helpful assistant."
    assert config.instruction == INSTRUCTION
    session = StreamingSession(loaded, config)
    tokenizer = loaded.tokenizer
    rng = np.random.default_rng(0)
    blocks = {}
    dropped_seen = instruction_evicted = False
    for second in range(SECONDS + 1):
        for image, stamp in _frames(rng, second):
            session.add_frame(image, stamp)
        ready, _ = session.sampler.pop_ready()
        if ready is None:
            continue
        index = int(round(ready.start))
        forced = tokenizer.encode(assistant_text(index), add_special_tokens=False)
        question = STREAM_QUESTION[1] if index == STREAM_QUESTION[0] else ""
        result = session.run_round(ready, forced_ids=forced, question=question)
        blocks[index] = session.vision.prepare(ready.frames)
        expected = expected_ids(tokenizer, index, result.vision_tokens)
        held = session.policy.token_ids.tolist()
        assert held == expected, (
            f"second {index}: the cache differs from the reference framing\n"
            f"held:     {tokenizer.decode(held)!r}\nexpected: {tokenizer.decode(expected)!r}")
        kept = sorted(blocks)[-WINDOW:]
        assert torch.equal(session.policy.positions,
                           _rope_positions(session, session.policy.token_ids,
                                           [blocks[k] for k in kept])), index
        if index == STREAM_QUESTION[0]:
            assert result.answer == "Yes." and result.text == words_of(index)
            # Its tokens are the answer's alone, not the narration after it.
            assert result.answer_tokens == len(tokenizer.encode("Yes.", add_special_tokens=False))
        if 10 <= index < 20:
            assert result.silent
        dropped_seen |= session.policy.dropped_text_tokens > 0
        instruction_evicted |= index >= WINDOW and INSTRUCTION not in tokenizer.decode(held)
        if index == ASKED_AFTER:
            _ask_leaves_the_stream_as_it_was(session, index + 1)
    assert dropped_seen and instruction_evicted


def _ask_leaves_the_stream_as_it_was(session, next_second: int) -> None:
    tokenizer = session.format.tokenizer
    fed = []
    original_feed = session.feed

    def recording_feed(rendered):
        fed.append(list(rendered.ids))
        return original_feed(rendered)

    session.feed = recording_feed
    before_ids, before_positions = session.policy.token_ids.clone(), session.policy.positions
    length = session.cache.length
    try:
        answer = session.ask(ASKED)
    finally:
        del session.feed
    # The question, as StreamingVLM takes one, for the second to come, without video.
    assert fed[0] == tokenizer.encode(
        f"<|im_start|>user\nTime={next_second:.1f}-{next_second + 1:.1f}s {ASKED}"
        "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert answer.answer_tokens >= 1
    assert torch.equal(session.policy.token_ids, before_ids)
    assert torch.equal(session.policy.positions, before_positions)
    assert session.cache.length == length

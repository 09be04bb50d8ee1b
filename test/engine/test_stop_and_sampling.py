"""The stop rule and the sampling defaults are the reference's: ``generate`` as StreamingVLM
calls it (temperature 0.9, repetition penalty 1.05, the rest from ``generation_config.json``)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from svlm_ros.engine.decoding import SamplingConfig, TokenChooser
from svlm_ros.engine.device_sampling import DeviceTokenChooser
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.stop_rule import Decision, StopRule, end_ids_from
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession

IM_END, END_OF_TEXT, NEWLINE = 151645, 151643, 198


def test_a_turn_ends_at_im_end_which_is_not_text():
    rule = StopRule(20, IM_END, frozenset({END_OF_TEXT}))
    assert rule.decide(0, IM_END) is Decision.END
    assert rule.decide(5, 42) is Decision.CONTINUE


def test_another_end_of_sequence_id_ends_the_turn_and_stays_text():
    rule = StopRule(20, IM_END, frozenset({END_OF_TEXT}))
    assert rule.decide(3, END_OF_TEXT) is Decision.LAST


def test_the_budget_counts_every_new_token():
    rule = StopRule(20, IM_END)
    assert rule.decide(18, 42) is Decision.CONTINUE  # the 19th token
    assert rule.decide(19, 42) is Decision.LAST  # the 20th: <|im_end|> is appended after it
    assert rule.decide(19, IM_END) is Decision.END  # 19 words and the model's own close


def test_an_answer_also_ends_at_a_newline_after_its_first_token():
    rule = StopRule(64, IM_END, newline_ids=frozenset({NEWLINE}))
    assert rule.decide(0, NEWLINE) is Decision.CONTINUE  # a leading newline is no answer yet
    assert rule.decide(2, NEWLINE) is Decision.LAST
    assert StopRule(64, IM_END).decide(2, NEWLINE) is Decision.CONTINUE  # narration goes on


def test_end_ids_come_from_the_generation_config():
    config = GenerationConfig(eos_token_id=[IM_END, END_OF_TEXT])
    assert end_ids_from(config, IM_END, never=()) == frozenset({END_OF_TEXT})
    assert end_ids_from(GenerationConfig(eos_token_id=IM_END), IM_END, never=()) == frozenset()
    assert end_ids_from(None, IM_END, never=()) == frozenset()


def test_unset_top_k_and_top_p_are_filled_as_generate_fills_them():
    # Qwen2.5-VL-Instruct's generation_config.json sets top_k 1 and top_p 0.001.
    qwen = GenerationConfig(top_k=1, top_p=0.001, temperature=0.1)
    resolved = SamplingConfig().resolved(qwen)
    assert (resolved.temperature, resolved.top_k, resolved.top_p,
            resolved.repetition_penalty) == (0.9, 1, 0.001, 1.05)
    silent = SamplingConfig().resolved(GenerationConfig())
    assert (silent.top_k, silent.top_p) == (50, 1.0)  # transformers' defaults
    given = SamplingConfig(top_k=7, top_p=0.5).resolved(qwen)
    assert (given.top_k, given.top_p) == (7, 0.5)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0.9, top_k=5, seed=3),
    SamplingConfig(temperature=1.2, top_k=20, top_p=0.7, repetition_penalty=1.1, seed=4),
    SamplingConfig(temperature=0.9, top_k=0, top_p=0.9, seed=5),
], ids=["top-k", "top-k-top-p-penalty", "top-k-off"])
def test_top_k_on_the_device_equals_transformers(sampling):
    vocab = 300
    context = torch.tensor([1, 2, 2, 9, 40, 41])
    generator = torch.Generator().manual_seed(2)
    host = TokenChooser(sampling, torch.device("cpu"))
    device = DeviceTokenChooser(sampling, torch.device("cpu"), vocab)
    device.start(context)
    resolved = sampling.resolved()
    reference = LogitsProcessorList()
    if resolved.repetition_penalty != 1.0:
        reference.append(RepetitionPenaltyLogitsProcessor(resolved.repetition_penalty))
    reference.append(TemperatureLogitsWarper(resolved.temperature))
    if resolved.top_k:
        reference.append(TopKLogitsWarper(resolved.top_k))
    if resolved.top_p < 1:
        reference.append(TopPLogitsWarper(resolved.top_p))
    for _ in range(20):
        logits = torch.randn(vocab, generator=generator) * 3
        expected = reference(context[None], logits[None].clone())[0]
        assert torch.equal(device.scores(logits), expected)
        kept = torch.isfinite(expected).sum()
        if resolved.top_k:
            assert kept <= resolved.top_k
        token = int(device.choose(logits))
        assert token == host.choose(logits, context) and torch.isfinite(expected[token])
        device.start(context)  # the same context for the next draw on both sides


def test_the_session_takes_the_checkpoints_generation_config(qwen_vocab_model_path, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(qwen_vocab_model_path, model)
    path = model / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(top_k=1, top_p=0.001, temperature=0.1)
    path.write_text(json.dumps(config))
    loaded = load_model(model, device="cpu", dtype="float32", attn_implementation="sdpa")
    session = StreamingSession(loaded, StreamConfig(max_pixels=56 * 56, min_pixels=28 * 28))
    assert (session.sampling.temperature, session.sampling.top_k,
            session.sampling.top_p) == (0.9, 1, 0.001)
    assert session.stop_rule.budget == 20
    assert session.stop_rule.end_ids == frozenset({END_OF_TEXT})  # Qwen2.5-VL's eos list
    assert END_OF_TEXT not in session.format.never_generated_ids()

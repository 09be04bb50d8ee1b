"""The free-memory check counts a round's working memory and the graph pools, not only the cache.

* the estimate is a pure function of the model config and the stream settings: checked part by
  part against shapes worked out by hand for Qwen2.5-VL-7B's dimensions;
* a session or a group whose caches fit but whose first round would not is refused, with the
  figures broken down (the old check let it pass);
* on the CPU, each phase's estimate bounds the peak of live tensors measured while a small
  model narrates (and is not far above it).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from engine_helpers import SyntheticCamera, small_config, stream
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from svlm_ros.engine.camera_group import CameraGroup
from svlm_ros.engine.memory_estimate import (
    CUBLAS_WORKSPACE,
    StreamWorkload,
    estimate_memory,
    session_memory,
)
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_shapes import QWEN25_VL_7B
from svlm_ros.engine.streaming_session import StreamingSession
from svlm_ros.engine.tiny_model import make_tiny_checkpoint

CAPACITY = 14944
WORKLOAD = StreamWorkload(capacity=CAPACITY, prompt_tokens=876, vision_patches=3072,
                          temporal_patches=1, frames=2, max_pixels=602112,
                          decode_path="graphed", pristine_keys=True, preprocess_here=True)


def qwen_7b_config(text_attention: str = "sdpa"):
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(text_config=dict(QWEN25_VL_7B["text"]),
                              vision_config=dict(QWEN25_VL_7B["vision"]))
    config.get_text_config()._attn_implementation = text_attention
    config.vision_config._attn_implementation = "svlm_flash_varlen_sdpa"
    return config


def test_estimate_for_the_7b_model_part_by_part():
    estimate = estimate_memory(qwen_7b_config(), WORKLOAD, torch.bfloat16, "cuda")
    # 28 layers x (keys, values, pristine keys) x 4 kv heads x 128 x 2 bytes per slot.
    assert estimate.kv_cache == CAPACITY * 28 * 3 * 4 * 128 * 2
    prefill = estimate.phases["prefill"]
    # The prompt attends with a mask: repeat_kv copies the cache's keys and values per head.
    assert prefill["repeat_kv over the capacity"] == 2 * 28 * CAPACITY * 128 * 2
    assert prefill["mask over the capacity"] == 876 * CAPACITY
    assert "attention weights (eager)" not in prefill
    assert estimate.largest_phase == "prefill"
    # One decode step's working memory kept by the session's CUDA graph.
    assert estimate.graph_pools == {"graphed decode step": estimate.phase_total("decode")}
    # cuBLAS workspaces: the default stream's, the graph's warm-up and capture streams'.
    assert estimate.workspace == 3 * CUBLAS_WORKSPACE
    assert estimate.total == (estimate.kv_cache + estimate.phase_total("prefill")
                              + estimate.phase_total("decode") + 3 * CUBLAS_WORKSPACE)
    # About 1.6 GiB where the cache alone is 1.20 GiB.
    assert 1.25 < estimate.total / estimate.kv_cache < 1.4
    text = estimate.describe("KV cache")
    assert "repeat_kv over the capacity 0.20 GiB" in text and "graphed decode step" in text


def test_eager_attention_counts_its_weights_and_the_cpu_no_pools():
    eager = estimate_memory(qwen_7b_config("eager"), WORKLOAD, torch.bfloat16, "cpu")
    weights = eager.phases["prefill"]["attention weights (eager)"]
    assert weights == 28 * 876 * CAPACITY * (2 + 4)  # bf16 scores and float32 softmax
    assert eager.phases["decode"]["repeat_kv over the capacity"] == 2 * 28 * CAPACITY * 128 * 2
    assert eager.graph_pools == {} and eager.workspace == 0


def test_group_counts_every_cache_and_the_batched_step():
    single = estimate_memory(qwen_7b_config(), WORKLOAD, torch.bfloat16, "cuda")
    group = estimate_memory(qwen_7b_config(),
                            dataclasses.replace(WORKLOAD, cameras=4, grouped=True),
                            torch.bfloat16, "cuda")
    assert group.kv_cache == 4 * single.kv_cache
    assert group.phases["decode"]["logits"] == 4 * single.phases["decode"]["logits"]
    assert group.graph_pools["batched decode step"] == group.phase_total("decode")
    assert group.graph_pools["ask steps of 4 cameras"] == 4 * single.phase_total("decode")
    assert group.phases["prefill"] == single.phases["prefill"]  # cameras prefill one by one
    assert group.workspace == (1 + 2 * 2) * CUBLAS_WORKSPACE


def _free(monkeypatch, free):
    monkeypatch.setattr(StreamingSession, "free_memory", lambda self: free)


def test_session_whose_cache_fits_but_round_does_not_is_refused(two_layer, monkeypatch):
    config = small_config(prefill_path="static", decode_path="static")
    session = StreamingSession(two_layer, config)
    estimate = session_memory(session)
    assert estimate.total > session.cache_bytes()
    _free(monkeypatch, session.cache_bytes() + 1)  # the old check passed here
    with pytest.raises(ValueError) as refused:
        StreamingSession(two_layer, config)
    message = str(refused.value)
    assert "needs" in message and "free on cpu" in message
    assert "KV cache (880 tokens) 0.4 MiB" in message
    assert "one round's working memory 1.2 MiB (its largest phase, preprocess:" in message
    assert "prefill 1.1 MiB" in message
    _free(monkeypatch, estimate.total)
    StreamingSession(two_layer, config)


def test_group_whose_caches_fit_but_round_does_not_is_refused(two_layer, monkeypatch):
    config = small_config()
    session = StreamingSession(two_layer, config)
    estimate = session_memory(session, cameras=3, grouped=True)
    _free(monkeypatch, 3 * session.cache_bytes() + 1)  # the old check passed here
    with pytest.raises(ValueError, match=r"KV caches of 3 cameras .* working memory"):
        CameraGroup(two_layer, config, cameras=3)
    _free(monkeypatch, estimate.total)
    CameraGroup(two_layer, config, cameras=3)


class PeakOfLiveTensors(TorchDispatchMode):
    """Peak bytes of the tensors created while active and still alive (storages counted once;
    views and in-place results of existing tensors not at all)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self.live or not storage.nbytes():
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    """A small model wide enough for its activations to stand out from the framing."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "wide", num_layers=2,
                                hidden_size=128, vision_hidden_size=64)
    return load_model(path, device="cpu", dtype="float32", attn_implementation="sdpa")


@pytest.mark.parametrize("paths", [dict(), dict(prefill_path="static", decode_path="static")],
                         ids=["eager", "fixed-shape"])
def test_estimate_bounds_the_measured_peak_on_the_cpu(wider, paths):
    session = StreamingSession(wider, small_config(window=3, max_pixels=224 * 224, **paths))
    estimate = session_memory(session)
    peaks: dict[str, int] = {}

    def measured(owner, name, phase):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            with PeakOfLiveTensors() as tracker:
                out = real(*args, **kwargs)
            peaks[phase] = max(peaks.get(phase, 0), tracker.peak)
            return out
        setattr(owner, name, wrapper)

    measured(session.vision, "prepare", "preprocess")
    measured(session, "_apply_eviction", "evict")
    measured(session, "_visual", "vision")
    measured(session, "_prefill", "prefill")  # the language model's, and the vision's within
    measured(session, "decode", "decode")
    measured(session, "run_round", "round")
    stream(session, SyntheticCamera(seed=1, size=(224, 224)), 8.0)
    assert session.policy.evicted_rounds > 0
    for phase in ("preprocess", "evict", "vision", "decode"):
        assert 0 < peaks[phase] <= estimate.phase_total(phase), phase
    assert peaks["prefill"] <= max(estimate.phase_total("prefill"),
                                   estimate.phase_total("vision"))
    assert peaks["round"] <= estimate.working <= 2 * peaks["round"]

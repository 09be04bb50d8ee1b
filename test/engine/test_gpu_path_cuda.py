"""The GPU path on a real GPU: skipped where CUDA is absent (it was written without one).

Run on a GPU machine with ``pytest test/engine/test_gpu_path_cuda.py``. These are the CPU
tests of ``test_gpu_path.py`` and ``test_camera_group.py`` with the parts that only exist on CUDA:
real CUDA-graph capture and replay, ``torch.compile(mode="reduce-overhead")``, the padded
prefill compiled on CUDA, SDPA limited to flash/efficient/math, frames prepared on the GPU, free
device memory, and no host sync inside a decode step or a token choice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import SyntheticCamera, forced_stream_logits, small_config, stream

from svlm_ros.engine.decoding import SamplingConfig, TokenChooser
from svlm_ros.engine.device_sampling import DeviceTokenChooser
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.streaming_session import StreamingSession
from svlm_ros.engine.tiny_model import make_tiny_checkpoint
from svlm_ros.engine.vision_input import VisionInput

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SAMPLED = SamplingConfig(temperature=0.9, top_p=0.9, repetition_penalty=1.05, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny2", num_layers=2)


@pytest.fixture(scope="module")
def cuda_fp32(checkpoint):
    return load_model(checkpoint, device="cuda", dtype="float32", attn_implementation="sdpa")


@pytest.fixture(scope="module")
def cuda_bf16(checkpoint):
    return load_model(checkpoint, device="cuda", dtype="bfloat16", attn_implementation="sdpa")


def test_auto_is_graphed_with_frames_on_the_gpu(cuda_fp32):
    session = StreamingSession(cuda_fp32, small_config())
    assert session.decode_path == "graphed"
    assert session.vision.device.type == "cuda"
    assert session.cache.buffers()[0][0].device.type == "cuda"


@pytest.mark.parametrize("decode_path", ["graphed", "compiled", "static"])
def test_fixed_shape_decode_equals_eager_fp32(cuda_fp32, decode_path):
    eager = forced_stream_logits(cuda_fp32, "eager")
    fixed = forced_stream_logits(cuda_fp32, decode_path)
    assert (fixed - eager).abs().max().item() < 1e-3


@pytest.mark.parametrize("decode_path", ["graphed", "compiled"])
def test_fixed_shape_decode_within_eager_bf16_error(cuda_fp32, cuda_bf16, decode_path):
    float32 = forced_stream_logits(cuda_fp32, "eager")
    eager = forced_stream_logits(cuda_bf16, "eager")
    fixed = forced_stream_logits(cuda_bf16, decode_path)
    rms_eager = (eager - float32).pow(2).mean().sqrt().item()
    rms_fixed = (fixed - float32).pow(2).mean().sqrt().item()
    assert rms_fixed <= 1.1 * rms_eager, (rms_fixed, rms_eager)
    assert (fixed - eager).abs().max().item() < 0.25


@pytest.mark.parametrize("prefill_path", ["static", "compiled"])
def test_fixed_shape_prefill_on_cuda_equals_eager(cuda_fp32, cuda_bf16, prefill_path):
    """The padded prefill with the graphed decode: float32 as eager; bf16 as far from float32
    as the eager bf16 path (the CPU bounds of test_static_prefill.py)."""
    eager = forced_stream_logits(cuda_fp32, "eager")
    fixed = forced_stream_logits(cuda_fp32, "graphed", prefill_path=prefill_path)
    assert (fixed - eager).abs().max().item() < 1e-3
    eager_bf16 = forced_stream_logits(cuda_bf16, "eager")
    fixed_bf16 = forced_stream_logits(cuda_bf16, "graphed", prefill_path=prefill_path)
    rms_eager = (eager_bf16 - eager).pow(2).mean().sqrt().item()
    rms_fixed = (fixed_bf16 - eager).pow(2).mean().sqrt().item()
    # CUDA kernels round differently from the CPU's: a looser ratio, and an absolute bound.
    assert rms_fixed <= 1.25 * rms_eager, (rms_fixed, rms_eager)
    assert (fixed_bf16 - eager_bf16).abs().max().item() < 0.25


def test_graphed_stream_with_ask_equals_eager(cuda_fp32):
    def narrate(decode_path):
        session = StreamingSession(cuda_fp32, small_config(window=2, decode_path=decode_path,
                                                           sampling=SAMPLED))
        camera = SyntheticCamera(seed=2)
        texts = [r.text for r in stream(session, camera, 4.0)]
        answer = session.ask("What is on the table?").text
        return texts + [r.text for r in stream(session, camera, 4.0)], answer

    assert narrate("graphed") == narrate("eager")


def test_no_host_sync_inside_a_decode_step_or_a_token_choice(cuda_fp32, monkeypatch):
    """The one sync per token is reading the chosen id, outside these two."""
    session = StreamingSession(cuda_fp32, small_config(window=2, decode_path="graphed",
                                                       sampling=SAMPLED))
    stream(session, SyntheticCamera(seed=5), 2.5)  # captured and warm
    checked = []

    def strict(function):
        def wrapper(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                checked.append(function.__name__)
        return wrapper

    monkeypatch.setattr(session.static_decoder, "step", strict(session.static_decoder.step))
    monkeypatch.setattr(session.chooser, "choose", strict(session.chooser.choose))
    stream(session, SyntheticCamera(seed=6, start_stamp=1003.0), 2.0)
    assert "step" in checked and "choose" in checked


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=0.0, repetition_penalty=1.3),
    SamplingConfig(temperature=1.3, top_p=0.8, repetition_penalty=1.2, seed=11),
])
def test_device_token_choice_equals_host_reference_on_cuda(sampling):
    cuda = torch.device("cuda")
    host = TokenChooser(sampling, cuda, [5, 17])
    device = DeviceTokenChooser(sampling, cuda, 300, [5, 17])
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(0, 300, (40,), generator=generator)
    device.start(context)
    chosen = []
    for _ in range(100):
        logits = (torch.randn(300, generator=generator) * 3).to(cuda)
        expected = host.choose(logits, torch.cat([context, torch.tensor(chosen,
                                                                        dtype=torch.long)]))
        assert int(device.choose(logits)) == expected
        chosen.append(expected)


def test_frames_prepared_on_the_gpu_equal_the_cpu_path(cuda_fp32):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(2)]
    args = dict(max_pixels=602112, min_pixels=78400, fps=2)
    host = VisionInput(cuda_fp32.processor, **args).prepare(frames)
    device = VisionInput(cuda_fp32.processor, device=torch.device("cuda"), **args).prepare(frames)
    assert device.pixel_values.device.type == "cuda"
    std = min(cuda_fp32.processor.video_processor.image_std)
    difference = (host.pixel_values - device.pixel_values.cpu()).abs().max().item()
    assert difference <= 1 / (255 * std) + 1e-5


def test_cache_larger_than_free_gpu_memory_is_refused(cuda_fp32, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 80 * 2**30))
    with pytest.raises(ValueError, match=r"MiB free on cuda"):
        StreamingSession(cuda_fp32, small_config())


def test_camera_group_with_cuda_graphs_equals_cameras_alone(cuda_fp32):
    from test_camera_group import _alone, _grouped

    config = small_config(window=2, sampling=SAMPLED, decode_path="graphed")
    _, alone_texts, _ = _alone(cuda_fp32, config)
    group, texts, _ = _grouped(cuda_fp32, config)
    assert group._graph is not None  # the batched step was captured
    assert texts == alone_texts


# ----- no waiting for the device: the vision tower, the group loop (test_host_sync.py on the
# CPU) -------------------------------------------------------------------------------------------
class _SyncDebug:
    """``torch.cuda.set_sync_debug_mode`` for a block: 'error' fails on any host sync."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        self.before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.mode)

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.before)


@pytest.mark.parametrize("compile_vision", [False, True], ids=["eager", "compiled"])
def test_vision_tower_never_waits_for_the_device(cuda_fp32, compile_vision):
    """640x480 frames: windows of unequal lengths (the branch that indexed with a mask)."""
    from svlm_ros.engine.attention import sdpa_kernels

    session = StreamingSession(cuda_fp32, small_config(max_pixels=640 * 480,
                                                       compile_vision=compile_vision))
    rng = np.random.default_rng(0)
    video = session.vision.prepare([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
                                    for _ in range(2)])
    lengths = session._tower_inputs(video.grid_thw)["cu_window_seqlens"].diff()
    assert lengths.min() < lengths.max()
    pixels = video.pixel_values.to(session.device, session.loaded.dtype)
    with torch.inference_mode(), sdpa_kernels(session.device):
        warm = session._visual(pixels, **session._tower_inputs(video.grid_thw)).pooler_output
        torch.cuda.synchronize()
        with _SyncDebug("error"):
            out = session._visual(pixels, **session._tower_inputs(video.grid_thw)).pooler_output
        stock = session.model.model.visual(pixels, grid_thw=video.grid_thw.cuda()).pooler_output
    assert torch.equal(out, warm)
    assert (out - stock).abs().max().item() < 1e-4


def test_group_loop_waits_for_the_device_only_to_read_the_chosen_ids(cuda_fp32, monkeypatch):
    """One wait per batched step (reading the chosen ids): the step's positions and slots go
    up from page-locked memory without one, the graph replays without one."""
    from test_camera_group import _prime, _seconds

    from svlm_ros.engine.camera_group import CameraGroup

    group = CameraGroup(cuda_fp32, small_config(window=2, sampling=SAMPLED), cameras=3)
    cameras = _prime([(SyntheticCamera(seed=40 + i), s) for i, s in enumerate(group.sessions)])
    group.run_rounds(_seconds(cameras))  # the batched step captured and warm
    assert group._graph is not None
    reads, real_read, real_decode = [], group._read_chosen, group._decode_together

    def allowed_read(chosen):
        with _SyncDebug("default"):
            reads.append(len(chosen))
            return real_read(chosen)

    def strict_decode(opened):
        with _SyncDebug("error"):
            return real_decode(opened)

    monkeypatch.setattr(group, "_read_chosen", allowed_read)
    monkeypatch.setattr(group, "_decode_together", strict_decode)
    for _ in range(2):
        assert all(r is not None for r in group.run_rounds(_seconds(cameras)))
    assert len(reads) > 2


# ----- memory: the estimate bounds what a stream takes (test_memory_estimate.py on the CPU) -----
@pytest.mark.parametrize("paths", [dict(decode_path="graphed"),
                                   dict(decode_path="compiled", prefill_path="static")],
                         ids=["graphed", "compiled-static-prefill"])
def test_estimate_bounds_the_device_memory_a_stream_takes(cuda_bf16, paths):
    from svlm_ros.engine.memory_estimate import session_memory

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    session = StreamingSession(cuda_bf16, small_config(window=2, max_pixels=224 * 224,
                                                       **paths))
    stream(session, SyntheticCamera(seed=7, size=(224, 224)), 6.0)
    session.ask("What is on the table?")
    torch.cuda.synchronize()
    taken = torch.cuda.max_memory_allocated() - baseline
    assert taken <= session_memory(session).total, (taken, session_memory(session).describe(
        "KV cache"))

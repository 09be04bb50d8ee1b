"""What keeps the GPU path from waiting for the GPU, checked on the CPU.

* the vision tower: the windowed attention builds its indices on the device (no boolean-mask
  indexing, nonzero or ``.item()``), and the tower takes its per-frame-size index tensors
  precomputed (``vision_tower.TowerInputs``): run on the ``meta`` device, where any read of a
  tensor's values fails, and traced whole by ``torch.compile(fullgraph=True)``;
* the batched decode step's positions and slots go up in one non-blocking copy from
  page-locked memory (``CameraGroup._step_inputs``);
* the fixed-shape decode step under ``torch.compile`` does not take transformers' ``repeat_kv``
  (which copies the whole cache per query head and token);
* the CPU stand-in for CUDA-graph replay (``graph_replay.ReplayOnCpu``) replays the capture:
  host state frozen at capture stays frozen, and inputs rebound after capture are caught.

The same on a real GPU, with ``torch.cuda.set_sync_debug_mode``: ``test_gpu_path_cuda.py``.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from engine_helpers import SyntheticCamera, small_config, stream
from graph_replay import GraphInputsMoved, ReplayOnCpu
from torch.utils._python_dispatch import TorchDispatchMode

from svlm_ros.engine.attention import register_single_query_gqa, windowed_sdpa_attention
from svlm_ros.engine.camera_group import CameraGroup
from svlm_ros.engine.static_decode import GraphedDecoder, decode_step
from svlm_ros.engine.streaming_session import StreamingSession
from svlm_ros.engine.vision_input import VisionInput
from svlm_ros.engine.vision_tower import TowerInputs


class HostReadForbidden(TorchDispatchMode):
    """Fails on the operations that read a tensor's values back to the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        if name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
                    "aten::is_nonzero", "aten::item"):
            raise AssertionError(f"{name} reads the device")
        if name == "aten::index.Tensor" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            raise AssertionError("boolean-mask indexing reads the device")
        return func(*args, **kwargs)


def _windows(lengths, heads=2, dim=8, seed=0):
    bounds = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, int(bounds[-1]), dim, generator=g) for _ in range(3))
    return q, k, v, bounds


# ----- vision tower -----------------------------------------------------------------------------
def test_windowed_attention_with_unequal_windows_reads_nothing_back():
    q, k, v, bounds = _windows([16, 4, 16, 14, 1])
    with HostReadForbidden():
        out = windowed_sdpa_attention(None, q, k, v, cu_seq_lens_q=bounds, max_length_q=16)[0]
    # One SDPA call per window: the reference.
    expected = [torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b], k[:, :, a:b], v[:, :, a:b]).transpose(1, 2)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
    assert (out - torch.cat(expected, dim=1)).abs().max().item() < 1e-6
    # On the meta device any read of the values fails: none happens.
    meta = [t.to("meta") for t in (q, k, v, bounds)]
    out = windowed_sdpa_attention(None, *meta[:3], cu_seq_lens_q=meta[3], max_length_q=16)[0]
    assert out.shape == (1, q.shape[2], 2, 8)


@pytest.fixture(scope="module")
def unequal_block(one_layer):
    """A 500x700 frame pair: windows of unequal lengths in the tower."""
    vision = VisionInput(one_layer.processor, max_pixels=602112, min_pixels=28 * 28, fps=2)
    rng = np.random.default_rng(0)
    block = vision.prepare([rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
                            for _ in range(2)])
    inputs = TowerInputs(one_layer.model.config.vision_config, "cpu")(block.grid_thw)
    lengths = inputs["cu_window_seqlens"].diff()
    assert lengths.min() < lengths.max()  # the unequal-window branch runs
    return block, inputs


def test_tower_inputs_equal_the_stock_tower_and_read_nothing_back(one_layer, unequal_block):
    block, inputs = unequal_block
    visual = one_layer.model.model.visual
    with torch.inference_mode():
        stock = visual(block.pixel_values, grid_thw=block.grid_thw).pooler_output
        with HostReadForbidden():
            mine = visual(block.pixel_values, **inputs).pooler_output
    assert torch.equal(mine, stock)
    # The whole tower on the meta device: the old call (grid_thw read back by transformers)
    # and the old windowed attention (a boolean mask per layer) both fail here.
    meta_visual = copy.deepcopy(visual).to("meta")
    meta_inputs = TowerInputs(one_layer.model.config.vision_config, "meta")(block.grid_thw)
    with torch.inference_mode():
        out = meta_visual(block.pixel_values.to("meta"), **meta_inputs).pooler_output
    assert out.shape == stock.shape


def test_compiled_tower_is_one_graph(one_layer, unequal_block):
    """``compile_vision``'s graph: no break in the tower (dynamo only, no inductor)."""
    block, inputs = unequal_block
    visual = one_layer.model.model.visual
    torch._dynamo.reset()
    compiled = torch.compile(visual, fullgraph=True, backend="eager", dynamic=False)
    with torch.inference_mode():
        out = compiled(block.pixel_values, **inputs).pooler_output
        stock = visual(block.pixel_values, grid_thw=block.grid_thw).pooler_output
    assert torch.equal(out, stock)


def test_session_computes_tower_inputs_once_per_frame_size(two_layer):
    session = StreamingSession(two_layer, small_config(window=2))
    camera = SyntheticCamera(seed=3)
    assert len(stream(session, camera, 3.0)) >= 2
    assert session._tower_inputs.computed == 1
    camera.size = (120, 96)
    stream(session, camera, 2.0)
    assert session._tower_inputs.computed == 2


# ----- the batched step's inputs ----------------------------------------------------------------
def test_group_step_inputs_go_up_in_one_non_blocking_copy(two_layer, monkeypatch):
    from test_camera_group import _prime, _seconds

    group = CameraGroup(two_layer, small_config(window=2, max_new_tokens=4), cameras=2)
    cameras = _prime([(SyntheticCamera(seed=30 + i), s) for i, s in enumerate(group.sessions)])
    copies, steps = [], []
    real_to, real_step = torch.Tensor.to, group._step

    def recording_to(self, *args, **kwargs):
        import sys

        if sys._getframe(1).f_code.co_filename.endswith("camera_group.py"):
            copies.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    def counting_step(*args):
        steps.append(1)
        return real_step(*args)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    monkeypatch.setattr(group, "_step", counting_step)
    group.run_rounds(_seconds(cameras))
    assert steps and len(copies) == len(steps) and all(copies)


def test_group_step_inputs_are_page_locked_for_cuda(monkeypatch):
    """Structure only (no CUDA here): the host tensor is asked for page-locked, copied once."""
    made, copies = [], []

    def fake_tensor(data, **kwargs):
        made.append(kwargs)
        return torch.as_tensor(data, dtype=kwargs.get("dtype"))

    def fake_to(self, device, non_blocking=False):
        copies.append((str(device), non_blocking))
        return self

    monkeypatch.setattr(torch, "tensor", fake_tensor)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    group = types.SimpleNamespace(device=torch.device("cuda"))
    positions, slots = CameraGroup._step_inputs(group, [5, 7], [40, 41])
    assert made == [{"dtype": torch.long, "pin_memory": True}]
    assert copies == [("cuda", True)]
    assert positions.tolist() == [5, 7] and slots.tolist() == [40, 41]


# ----- the compiled decode step and repeat_kv ---------------------------------------------------
def test_compiled_decode_step_does_not_repeat_the_cache(two_layer, monkeypatch):
    """Traced by dynamo (as ``compiled`` is), the step groups query heads by key/value head
    instead of calling transformers' ``repeat_kv`` (a copy of every layer's whole cache)."""
    import transformers.integrations.sdpa_attention as sdpa_module

    model = two_layer.model
    text = model.config.get_text_config()
    assert text.num_attention_heads > text.num_key_value_heads  # grouped-query attention
    head_dim = text.hidden_size // text.num_attention_heads
    g = torch.Generator().manual_seed(0)
    shape = (2, text.num_key_value_heads, 48, head_dim)
    keys = [torch.randn(shape, generator=g) for _ in range(text.num_hidden_layers)]
    values = [torch.randn(shape, generator=g) for _ in range(text.num_hidden_layers)]
    token, position, slot = torch.tensor([5, 9]), torch.tensor([30, 12]), torch.tensor([30, 12])

    def run(step):
        with torch.inference_mode():
            return step(model.model.language_model, model.lm_head, token, position, slot,
                        [k.clone() for k in keys], [v.clone() for v in values], None, False)

    reference = run(decode_step)
    register_single_query_gqa()
    traced = []
    real_repeat = sdpa_module.repeat_kv

    def counting_repeat(hidden_states, groups):
        traced.append(torch.compiler.is_compiling())
        return real_repeat(hidden_states, groups)

    monkeypatch.setattr(sdpa_module, "repeat_kv", counting_repeat)
    torch._dynamo.reset()
    compiled = run(torch.compile(decode_step, backend="eager", dynamic=False))
    torch._dynamo.reset()
    assert not any(traced)
    assert (compiled - reference).abs().max().item() < 1e-5


# ----- the CPU stand-in for graph replay --------------------------------------------------------
def test_stand_in_replays_the_capture_not_the_closure():
    buffer = torch.zeros(3)
    state = {"scale": 1.0}
    inputs = types.SimpleNamespace(x=torch.ones(3))

    def step():
        return inputs.x * state["scale"] + buffer

    graph = ReplayOnCpu("cpu")
    out = graph.capture(step)
    assert torch.isnan(out).all()  # a capture only records: nothing is computed yet
    graph.replay()
    assert torch.equal(out, torch.ones(3))
    inputs.x.copy_(torch.full((3,), 2.0))  # written in place: the graph sees it
    buffer.fill_(1.0)
    state["scale"] = 5.0  # a host value read at capture: the graph does not
    graph.replay()
    assert torch.equal(out, torch.full((3,), 3.0))
    inputs.x = torch.ones(3)  # rebound after capture: a graph would read the old tensor
    with pytest.raises(GraphInputsMoved, match="inputs.x"):
        graph.replay()


def test_stand_in_catches_a_decoder_that_rebinds_its_inputs(two_layer):
    class Rebinding(GraphedDecoder):
        def step(self, token, position):
            if self._graph is not None:
                self._token = token.clone()  # wrong: the graph reads the captured tensor
            return super().step(token, position)

    session = StreamingSession(two_layer, small_config(window=2, decode_path="static"))
    session.static_decoder = Rebinding(session.model, session.cache, graph_factory=ReplayOnCpu)
    with pytest.raises(GraphInputsMoved, match="_token"):
        stream(session, SyntheticCamera(seed=4), 2.5)

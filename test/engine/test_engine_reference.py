"""Deep models: the streaming engine equals a slow, independent reference after evictions.

The reference keeps, for every token it ever computed, the keys and values *before* rotation
(in plain torch, re-implementing the decoder layer from the model's weights). At every step it
takes the retained tokens (the policy decides which), asks transformers' own ``get_rope_index``
for the positions of the retained sequence as if it were fresh, rotates all keys at those
positions and attends. It shares no cache, position or rotation code with the engine, so equal
logits mean the engine's compaction, re-rotation and position bookkeeping are right at depth.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import SyntheticCamera, make_loaded, small_config, stream

from svlm_ros.engine.streaming_session import StreamingSession

TOLERANCE = 1e-4


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class UnrotatedReference:
    """Recomputes a stream from un-rotated keys/values, token by token order of the cache."""

    def __init__(self, session: StreamingSession):
        self.session = session
        self.model = session.model
        self.text = self.model.model.language_model
        self.ids = torch.zeros(0, dtype=torch.long)
        self.keys = [None] * len(self.text.layers)  # per layer (kv_heads, tokens, head_dim)
        self.values = [None] * len(self.text.layers)
        self.blocks = []  # video blocks of the retained tokens, in order

    def evict(self, kept_index: torch.Tensor, retained_starts: list[float], blocks_by_start):
        self.ids = self.ids[kept_index]
        self.keys = [k[:, kept_index] for k in self.keys]
        self.values = [v[:, kept_index] for v in self.values]
        self.blocks = [blocks_by_start[start] for start in retained_starts]

    def _positions(self, ids: torch.Tensor, blocks) -> torch.Tensor:
        token_types = (ids[None] == self.session.format.video_pad_id).int() * 2
        if not blocks:
            return torch.arange(ids.numel()).expand(3, -1)[:, None, :]
        positions, _ = self.model.model.get_rope_index(
            ids[None],
            mm_token_type_ids=token_types,
            video_grid_thw=torch.cat([b.grid_thw for b in blocks]),
            second_per_grid_ts=torch.tensor([b.second_per_grid for b in blocks]),
        )
        return positions

    @torch.inference_mode()
    def extend(self, new_ids: torch.Tensor, block) -> torch.Tensor:
        """Append tokens (with their video block, if any); return their logits."""
        old = self.ids.numel()
        all_ids = torch.cat([self.ids, new_ids])
        blocks = self.blocks + ([block] if block is not None else [])
        positions = self._positions(all_ids, blocks)
        hidden = self.text.embed_tokens(new_ids[None])
        if block is not None:
            features = self.model.model.get_video_features(
                block.pixel_values, block.grid_thw
            ).pooler_output
            mask = new_ids == self.session.format.video_pad_id
            hidden[0, mask] = torch.cat(features).to(hidden.dtype)
        cos, sin = self.text.rotary_emb(hidden, positions)  # (1, all, head_dim)
        count = new_ids.numel()
        causal = torch.ones(count, old + count, dtype=torch.bool).tril(diagonal=old)
        for index, layer in enumerate(self.text.layers):
            attention = layer.self_attn
            head_dim = attention.head_dim
            normed = layer.input_layernorm(hidden)
            q = attention.q_proj(normed).view(count, -1, head_dim).transpose(0, 1)
            k = attention.k_proj(normed).view(count, -1, head_dim).transpose(0, 1)
            v = attention.v_proj(normed).view(count, -1, head_dim).transpose(0, 1)
            keys = k if self.keys[index] is None else torch.cat([self.keys[index], k], dim=1)
            values = v if self.values[index] is None else torch.cat([self.values[index], v], 1)
            self.keys[index], self.values[index] = keys, values
            rotated_keys = keys * cos[0] + _rotate_half(keys) * sin[0]
            rotated_q = q * cos[0, old:] + _rotate_half(q) * sin[0, old:]
            groups = rotated_q.shape[0] // rotated_keys.shape[0]
            rotated_keys = rotated_keys.repeat_interleave(groups, dim=0)
            values = values.repeat_interleave(groups, dim=0)
            scores = rotated_q @ rotated_keys.transpose(1, 2) * head_dim**-0.5
            scores = scores.masked_fill(~causal, float("-inf"))
            attended = torch.softmax(scores.float(), dim=-1) @ values
            attended = attended.transpose(0, 1).reshape(1, count, -1)
            hidden = hidden + attention.o_proj(attended)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        self.ids = all_ids
        self.blocks = blocks
        return self.model.lm_head(self.text.norm(hidden))[0].float()


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("models"), layers=3, seed=3)


@pytest.mark.parametrize("window,text_sink,text_window", [(2, 4, 6), (3, 0, 12)])
def test_deep_model_equals_unrotated_reference_through_evictions(
    three_layer, window, text_sink, text_window
):
    session = StreamingSession(
        three_layer,
        small_config(window=window, text_sink=text_sink, text_window=text_window),
        record_logits=True,
    )
    reference = UnrotatedReference(session)
    camera = SyntheticCamera(seed=11)
    blocks_by_start = {}
    checked = []

    def mirror(second, result):
        block = session.vision.prepare(second.frames)
        blocks_by_start[second.start] = block
        plan = session.last_eviction
        if plan.evicted_tokens:
            retained_before = [r.stream_second for r in session.policy.rounds[:-1]]
            reference.evict(plan.kept_index, retained_before, blocks_by_start)
        last = session.policy.rounds[-1]
        round_ids = session.policy.token_ids[-last.length:]
        if reference.ids.numel() == 0:  # the first round brings the sink with it
            round_ids = session.policy.token_ids
        logits = reference.extend(round_ids, block)
        first_row = round_ids.numel() - last.length + last.prompt_tokens - 1
        for i, streamed in enumerate(session.last_round_logits):
            difference = (logits[first_row + i] - streamed).abs().max().item()
            assert difference < TOLERANCE, (second.start, i, difference)
        assert torch.equal(reference.ids, session.policy.token_ids)
        checked.append(len(session.last_round_logits))

    camera.size = (96, 128)
    stream(session, camera, 4 * window + 1, on_round=mirror)
    camera.size = (150, 100)
    stream(session, camera, 3 * window, on_round=mirror)
    assert session.policy.evicted_rounds >= 4 * window
    # Every round compared at least its first generated token's logits.
    assert len(checked) == session.rounds_run and min(checked) >= 1

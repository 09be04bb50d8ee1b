"""bfloat16 rounding drift of the bounded cache stays within the model's own bf16 noise.

A one-layer tiny model in bfloat16 streams rounds teacher-forced with random words and the end marker each, a
2-round vision window and a 100-token text window, so previous-text keys are moved at almost
every eviction (about 45 times here; up to 145 in a two-hour stream with the paper's windows,
see the README). The last round's logits are compared with a fresh bf16 and a fresh float32
forward pass over exactly the retained sequence (``bf16_drift.py``).
"""

from __future__ import annotations

import pytest

from svlm_ros.engine.bf16_drift import measure_drift
from svlm_ros.engine.tiny_model import make_tiny_checkpoint

SETTINGS = dict(seconds=150, window=2, text_sink=4, text_window=100, max_new_tokens=3,
                frame=56, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny1", num_layers=1)


def test_bf16_stream_stays_within_the_models_own_bf16_error(checkpoint):
    report = measure_drift(checkpoint, pristine_keys=True, **SETTINGS)
    assert report.max_rotations >= 40  # the keys really were moved many times
    # The bound: streamed-vs-fresh (bf16) within fresh-bf16-vs-float32 on the same sequence.
    assert report.stream_vs_fresh <= report.fresh_vs_float32, report
    assert report.rms_stream_vs_float32 <= 1.25 * report.rms_fresh_vs_float32, report


@pytest.mark.slow
def test_rerotating_stored_keys_exceeds_that_bound(checkpoint):
    """Why pristine keys exist: rounding at every rotation breaks the bound above."""
    report = measure_drift(checkpoint, pristine_keys=False, **SETTINGS)
    assert report.stream_vs_fresh > report.fresh_vs_float32, report

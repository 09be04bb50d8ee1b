"""bfloat16 rounding drift of the bounded cache stays within the model's own bf16 noise.

A one-layer tiny model in bfloat16 streams rounds teacher-forced with two random words and the
end marker each, a 2-round vision window and a 100-token text window, so previous-text keys
are moved at almost every eviction (about 50 times here; up to 145 in a two-hour stream with
the paper's windows, see docs/gpu.md). The logits of the last 30 rounds are compared with
fresh bf16 and fresh float32 forward passes over exactly the sequence retained after each
(``bf16_drift.py``), and the moved tokens' cached keys with the fresh passes' keys.

The bounds are on the keys (what eviction rotates) and on RMS logit differences pooled over
90 rows. One round's maximum logit difference is not a usable bound: it compares a few
bfloat16 ulps of the largest logits of three rows, and with sound pristine keys it exceeded
the fresh pass's own maximum difference in 6 of 30 measured seeds and workloads (up to 1.36x,
once with every key rotated at most once); ``bf16_drift.py`` has the measurements.
"""

from __future__ import annotations

import pytest

from svlm_ros.engine.bf16_drift import measure_drift
from svlm_ros.engine.tiny_model import make_tiny_checkpoint

SETTINGS = dict(seconds=150, window=2, text_sink=4, text_window=100, max_new_tokens=3,
                frame=56, seed=0, compare_rounds=30)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny1", num_layers=1)


def test_bf16_stream_stays_within_the_models_own_bf16_error(checkpoint):
    report = measure_drift(checkpoint, pristine_keys=True, **SETTINGS)
    assert report.max_rotations >= 40  # the keys really were moved many times
    assert report.moved_keys >= 100 and report.compared_rows == 90
    # Every moved key is as close to float32 as a fresh bf16 key (measured 1.03-1.11x; one
    # more rounding than a fresh key at most; re-rotating stored keys: 2.4x and more).
    assert report.key_error_stream <= 1.2 * report.key_error_fresh, report
    # Streamed-vs-fresh (bf16) within fresh-bf16-vs-float32 on the same sequences (measured
    # 0.64-0.81x; re-rotating: 1.34x and more), and the stream as close to float32 as the
    # fresh bf16 pass give or take a quarter (measured 0.96-1.10x).
    assert report.rms_stream_vs_fresh <= report.rms_fresh_vs_float32, report
    assert report.rms_stream_vs_float32 <= 1.25 * report.rms_fresh_vs_float32, report
    # No single logit strays far either (pooled maxima measured 0.33-0.98x).
    assert report.stream_vs_fresh <= 1.25 * report.fresh_vs_float32, report


@pytest.mark.slow
def test_rerotating_stored_keys_exceeds_that_bound(checkpoint):
    """Why pristine keys exist: rounding at every rotation breaks the bounds above."""
    report = measure_drift(checkpoint, pristine_keys=False, **SETTINGS)
    assert report.key_error_stream > 2 * report.key_error_fresh, report
    assert report.rms_stream_vs_fresh > report.rms_fresh_vs_float32, report
    assert report.stream_vs_fresh > report.fresh_vs_float32, report

"""Alignment of frames and text to stream seconds (pure logic, no bags)."""

from __future__ import annotations

import numpy as np
import pytest
from svlm_training.alignment import SecondAligner, StampsOutOfOrder, TextEvent
from svlm_training.bag2dataset import resolve_stamps
from svlm_training.bag_reading import BagError

ORIGIN = 500.0


def frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def feed(aligner, stamps):
    seconds = []
    for index, stamp in enumerate(stamps):
        seconds.extend(aligner.add(ORIGIN + stamp, frame(index)))
    return seconds


def test_text_lands_in_the_second_its_time_falls_in_and_is_joined_in_time_order():
    texts = [TextEvent(ORIGIN + 2.9, "second part"), TextEvent(ORIGIN + 2.1, "first part"),
             TextEvent(ORIGIN + 0.5, "zero ..."), TextEvent(ORIGIN + 1.0, "one")]
    aligner = SecondAligner(texts, fps=2, period=1)
    seconds = feed(aligner, [i / 10 for i in range(50)])  # 10 Hz for 5 s
    assert [s.index for s in seconds] == [0, 1, 2, 3]  # second 4 is still open at the end
    assert [s.text for s in seconds] == ["zero", "one", "first part second part", ""]
    (last,) = aligner.flush()  # the end of the stream closes the open second
    assert (last.index, last.text, len(last.frames)) == (4, "", 2)
    assert aligner.flush() == []
    stats = aligner.finish()
    assert stats.text_events == 4
    assert stats.text_before_stream == stats.text_after_stream == stats.text_in_gaps == 0


def test_frames_are_sampled_as_the_engine_samples_them():
    aligner = SecondAligner([TextEvent(ORIGIN, "x")], fps=2, period=1)
    seconds = feed(aligner, [i / 10 for i in range(30)])
    # Slots [k, k+0.5) and [k+0.5, k+1): the first frame of each, i.e. frames 10k and 10k+5.
    assert [[int(f[0, 0, 0]) for f in s.frames] for s in seconds] == [[0, 5], [10, 15]]
    assert all(s.received == 2 for s in seconds)
    assert [(s.start, s.end) for s in seconds] == [(0.0, 1.0), (1.0, 2.0)]


def test_text_outside_narrated_seconds_is_dropped_and_counted():
    texts = [TextEvent(ORIGIN - 3, "before"), TextEvent(ORIGIN + 2.5, "in the gap"),
             TextEvent(ORIGIN + 4.2, "open last second"), TextEvent(ORIGIN + 60, "after"),
             TextEvent(ORIGIN + 0.2, "kept")]
    aligner = SecondAligner(texts, fps=2, period=1)
    # Frames in seconds 0, 1, 3, 4 (second 2 is a camera stall).
    stamps = [0, 0.5, 1, 1.5, 3, 3.5, 4, 4.5]
    seconds = feed(aligner, stamps)
    assert [s.index for s in seconds] == [0, 1, 3]
    assert seconds[0].text == "kept"
    stats = aligner.finish()
    assert (stats.text_before_stream, stats.text_in_gaps, stats.text_after_stream) == (1, 1, 2)
    assert stats.gap_seconds == 1


def test_a_short_second_repeats_its_last_frame():
    aligner = SecondAligner([TextEvent(ORIGIN, "x")], fps=2, period=1)
    seconds = feed(aligner, [0.0, 1.0, 1.6, 2.0])  # second 0: one frame
    assert [int(f[0, 0, 0]) for f in seconds[0].frames] == [0, 0]
    assert seconds[0].received == 1


def test_a_stamp_going_back_is_refused():
    aligner = SecondAligner([TextEvent(ORIGIN, "x")], fps=2, period=1)
    feed(aligner, [0, 0.5, 1.0])
    with pytest.raises(StampsOutOfOrder, match="earlier than the frame before it"):
        aligner.add(ORIGIN + 0.7, frame(9))


def test_stamp_source_auto_uses_headers_only_when_both_topics_have_them():
    image, compressed = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    string, narration = "std_msgs/msg/String", "svlm_ros/msg/Narration"
    assert resolve_stamps("auto", image, narration) == "header"
    assert resolve_stamps("auto", compressed, string) == "receive"
    assert resolve_stamps("receive", image, narration) == "receive"
    with pytest.raises(BagError, match="no header"):
        resolve_stamps("header", image, string)


def test_only_kept_frames_are_decoded():
    decoded = []

    def decoder(index):
        def decode():
            decoded.append(index)
            return frame(index)
        return decode

    aligner = SecondAligner([TextEvent(ORIGIN, "x")], fps=2, period=1)
    for index in range(20):  # 10 Hz for 2 s
        aligner.offer(ORIGIN + index / 10, decoder(index))
    assert decoded == [0, 5, 10, 15]
    assert aligner.stats.frames_offered == 20 and aligner.stats.frames_sampled == 4

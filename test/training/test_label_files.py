"""Label files: WebVTT, SRT and JSONL parsed into cues, errors naming the line, the clock rule
and the spread of a cue's words over the seconds it covers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from svlm_training.alignment import SecondAligner
from svlm_training.label_files import Cue, LabelFileError, read_cues, write_jsonl, write_vtt
from svlm_training.label_timing import ABSOLUTE_FROM, cue_events

VTT = """\ufeffWEBVTT - made by hand
Kind: captions

NOTE a comment
that spans two lines

STYLE
::cue { color: yellow }

intro
00:00.500 --> 00:01.000 align:start position:10%
<v Narrator>The card</v> is <i>red</i>

00:00:02.000 --> 00:00:04.250
two lines
&amp; more &lt;here&gt;

01:00:00.000 --> 01:00:01.000
an hour in
"""

SRT = """1
00:00:00,000 --> 00:00:01,500
<i>first</i> cue

2
00:00:03,250 --> 00:00:04,000
second
cue

00:00:05,000 --> 00:00:06,000
no counter
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_webvtt_cues_with_identifiers_settings_markup_and_comments(tmp_path):
    cues = read_cues(write(tmp_path, "a.vtt", VTT))
    assert [(c.start, c.end, c.text) for c in cues] == [
        (0.5, 1.0, "The card is red"),
        (2.0, 4.25, "two lines & more <here>"),
        (3600.0, 3601.0, "an hour in"),
    ]
    assert [c.line for c in cues] == [11, 14, 18]


def test_srt_cues(tmp_path):
    cues = read_cues(write(tmp_path, "a.srt", SRT))
    assert [(c.start, c.end, c.text) for c in cues] == [
        (0.0, 1.5, "first cue"), (3.25, 4.0, "second cue"), (5.0, 6.0, "no counter")]


def test_jsonl_cues_ignore_other_keys_and_blank_lines(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"start": 0, "end": 1, "text": "  one  two "}\n\n'
                                      '{"start": 1.5, "end": 2, "text": "", "silent": true}\n')
    assert read_cues(path) == [Cue(0.0, 1.0, "one two", 1), Cue(1.5, 2.0, "", 3)]


def test_format_from_the_first_line_without_a_known_suffix(tmp_path):
    assert read_cues(write(tmp_path, "a.txt", "WEBVTT\n\n00:01.000 --> 00:02.000\nhi\n"))[0].text \
        == "hi"
    assert read_cues(write(tmp_path, "b.txt", SRT))[0].text == "first cue"
    with pytest.raises(LabelFileError, match=r"c\.txt: unknown label format"):
        read_cues(write(tmp_path, "c.txt", "hello\n"))


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("bad.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nok\n\n00:03.000 -> 00:04.000\nx\n", 6,
         "expected a cue"),
        ("bad.vtt", "WEBVTT\n\nid\n00:01.000 --> 00:0x.000\nx\n", 4, "expected a timing line"),
        ("bad.vtt", "WEBVTT\n\n00:05.000 --> 00:04.000\nx\n", 3,
         "the cue ends .* before it starts"),
        ("bad.vtt", "WEBVT\n\n00:01.000 --> 00:02.000\nx\n", 1,
         "a WebVTT file must begin with the line"),
        ("bad.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\nthree\n00:00:03,000\n", 5,
         "expected a cue number or a timing line"),
        ("bad.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n", 5, "cue 2 has no timing"),
        ("bad.jsonl", '{"start": 0, "end": 1, "text": "a"}\n{"start": 1, "end": 2, "text": \n',
         2, "not valid JSON"),
        ("bad.jsonl", '\n\n{"start": 0, "text": "a"}\n', 3, "key 'end' is missing"),
        ("bad.jsonl", '{"start": "0:01", "end": 1, "text": "a"}\n', 1, "'start' must be a num"),
        ("bad.jsonl", '{"start": 2, "end": 1, "text": "a"}\n', 1, "'end' .* is before 'start'"),
        ("bad.jsonl", '{"start": 0, "end": 1, "text": 5}\n', 1, "'text' must be a string"),
        ("bad.jsonl", '[0, 1, "a"]\n', 1, "expected an object"),
    ],
)
def test_a_bad_file_is_refused_naming_file_and_line(tmp_path, name, text, where, what):
    path = write(tmp_path, name, text)
    with pytest.raises(LabelFileError, match=rf"{name}:{where}: {what}") as error:
        read_cues(path)
    assert error.value.line == where


def test_missing_or_empty_file_is_refused(tmp_path):
    with pytest.raises(LabelFileError, match="no such label file"):
        read_cues(tmp_path / "none.vtt")
    with pytest.raises(LabelFileError, match="no cue in this vtt file"):
        read_cues(write(tmp_path, "empty.vtt", "WEBVTT\n\nNOTE nothing\n"))


def test_written_vtt_and_jsonl_read_back(tmp_path):
    cues = [Cue(0.0, 1.0, "a red card"), Cue(1.0, 2.0, ""), Cue(3599.5, 3600.25, "x --> y & <z>")]
    text = io.StringIO()
    write_vtt(text, cues)
    assert text.getvalue().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na red card\n")
    back = read_cues(write(tmp_path, "w.vtt", text.getvalue()))
    assert [(c.start, c.end, c.text) for c in back] == [(0.0, 1.0, "a red card"),
                                                        (3599.5, 3600.25, "x --> y & <z>")]
    rows = io.StringIO()
    write_jsonl(rows, [{"start": c.start, "end": c.end, "text": c.text} for c in cues])
    assert [(c.start, c.end, c.text) for c in read_cues(write(tmp_path, "w.jsonl",
                                                              rows.getvalue()))] == \
        [(c.start, c.end, c.text) for c in cues]


def aligned_texts(cues, offset=0.0, seconds=6, origin=1000.0):
    """The per-second text of a 2 fps stream starting at ``origin`` labelled by ``cues``."""
    labelled = cue_events(cues, "f.vtt", offset)
    aligner = SecondAligner(labelled.events, fps=2, period=1,
                            relative_texts=not labelled.absolute)
    frame = np.zeros((4, 4, 3), np.uint8)
    texts = {}
    for k in range(seconds * 2):
        for second in aligner.add(origin + k / 2, frame):
            texts[second.index] = second.text
    for second in aligner.flush():
        texts[second.index] = second.text
    return [texts[i] for i in range(seconds)], aligner.finish()


def test_stream_time_counts_from_the_first_frame_and_a_cue_ending_on_a_boundary_stays():
    texts, stats = aligned_texts([Cue(0, 1, "first second"), Cue(2, 3, "third")])
    assert texts == ["first second", "", "third", "", "", ""]
    assert stats.text_before_stream == stats.text_after_stream == 0


def test_a_long_cue_is_spread_over_its_seconds_word_by_word():
    texts, _ = aligned_texts([Cue(1, 4, "one two three four five six")])
    assert texts == ["", "one two", "three four", "five six", "", ""]


def test_offset_moves_the_labels_and_text_before_the_stream_is_counted():
    texts, _ = aligned_texts([Cue(0, 1, "a"), Cue(2, 3, "b")], offset=1.0)
    assert texts == ["", "a", "", "b", "", ""]
    # [1.5, 2.5]: said by the end of second 2, the second it ends in.
    texts, _ = aligned_texts([Cue(0, 1, "a"), Cue(2, 3, "b")], offset=1.5)
    assert texts == ["", "", "a", "", "b", ""]
    texts, stats = aligned_texts([Cue(0, 1, "a"), Cue(2, 3, "b")], offset=-2.0)
    assert texts == ["b", "", "", "", "", ""]
    assert stats.text_before_stream == 1


def test_absolute_stamps_are_on_the_bags_clock():
    origin = ABSOLUTE_FROM + 7_000_000.25
    cues = [Cue(origin + 3, origin + 4, "at three"), Cue(origin + 5.5, origin + 5.9, "five")]
    texts, _ = aligned_texts(cues, origin=origin)
    assert texts == ["", "", "", "at three", "", "five"]
    texts, _ = aligned_texts(cues, offset=-1, origin=origin)
    assert texts == ["", "", "at three", "", "five", ""]


def test_a_file_mixing_stream_times_and_stamps_is_refused_at_the_cue():
    with pytest.raises(LabelFileError, match=r"f\.vtt:9: this cue starts at .* stream times"):
        cue_events([Cue(0, 1, "a", 3), Cue(ABSOLUTE_FROM + 5, ABSOLUTE_FROM + 6, "b", 9)],
                   "f.vtt")


def test_a_label_word_ending_in_dots_keeps_them():
    # "..." closes a narrated second (the end marker), but in a label file it is punctuation.
    texts, _ = aligned_texts([Cue(0, 1, "wait... what ...")])
    assert texts[0] == "wait... what ..."

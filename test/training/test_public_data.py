"""The reference's training JSONL (LiveCC style) read into the dataset format, mixed in one
build with a bag; bad lines are refused naming the line."""

from __future__ import annotations

import json

import pytest
from bag_factory import BagSpec, write_bag
from svlm_training.bag2dataset import main as bag2dataset
from svlm_training.dataset_format import SecondsDataset
from svlm_training.label_files import LabelFileError
from svlm_training.public_data import read_public_jsonl
from test_narrate import write_mp4
from training_helpers import SMALL_FRAMES


def sample(video: str, start: float, end: float | None, stream: list) -> list:
    """One line of a made-up public file, shaped like the reference's samples."""
    element = {"type": "video", "video": video, "video_start": start}
    if end is not None:
        element["video_end"] = end
    return [{"role": "user", "content": [element, {"type": "text", "text": "Commentate."}]},
            {"role": "assistant", "content": [{"type": "text_stream", "text_stream": stream}]}]


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def public(tmp_path):
    clips = tmp_path / "public"
    (clips / "videos").mkdir(parents=True)
    write_mp4(clips / "videos" / "match.mp4", seconds=8)
    lines = [
        # Word-level text in the video's own time; the clip is seconds 2 to 6 of the video.
        sample("videos/match.mp4", 2.0, 6.0,
               [[2.1, 2.4, "kick"], [2.4, 3.0, "off"], [3.2, 3.5, "a"], [3.5, 4.6, "pass"],
                [5.0, 5.9, "goal!"]]),
        # A whole video, a span of text over two seconds.
        sample("videos/match.mp4", 0.0, None, [[1.0, 3.0, "two words"]]),
        [0, 1234],  # a seek index line, skipped
    ]
    return write_jsonl(clips / "train.jsonl", lines)


def test_public_clips_and_a_bag_in_one_dataset(tmp_path, public):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, texts={1: "from the bag"}))
    out = tmp_path / "mixed"
    code = bag2dataset([str(bag), "--image-topic", "/camera/image", "--text-topic", "/commentary",
                        "--public-jsonl", str(public), "--out", str(out), "--quiet",
                        *SMALL_FRAMES])
    assert code == 0
    data = SecondsDataset(out)
    episodes = [data.texts(rows) for rows in data.episodes()]
    # Each word in the second it ends in, counted from the clip's first frame (2.0 s).
    assert episodes == [
        ["", "from the bag", ""],
        ["kick off", "a", "pass", "goal!"],
        ["", "two", "words", "", "", "", "", ""],
    ]
    assert data[3].frames.shape == (2, 56, 56, 3)
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    assert [s.get("public") for s in sources] == [None, f"{public}:1", f"{public}:2"]
    assert sources[1]["video_start"] == 2.0 and sources[1]["video_end"] == 6.0


def test_video_root_and_missing_videos(tmp_path, public):
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_text(public.read_text())
    with pytest.raises(LabelFileError, match=r"elsewhere\.jsonl:1: video 'videos/match.mp4' "
                                             "not found"):
        read_public_jsonl(moved)
    clips = read_public_jsonl(moved, video_root=public.parent)
    assert [c.video for c in clips] == [public.parent / "videos" / "match.mp4"] * 2
    assert [(c.start, c.end) for c in clips] == [(2.0, 6.0), (0.0, None)]


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('{"video": "a.mp4"}', "expected a conversation"),
        ('[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]',
         "no user message with a"),
        (json.dumps(sample("videos/match.mp4", 0, 4, [])[:1]), "no assistant message"),
        (json.dumps(sample("videos/match.mp4", 3, 2, [])), "'video_end' .* is not after"),
        (json.dumps(sample("videos/match.mp4", 0, 4, [[1, 2]])), "text_stream entry 0 must be"),
        (json.dumps(sample("videos/match.mp4", 0, 4, [[1, 2, "a"], [3, 2, "b"]])),
         "text_stream entry 1 ends"),
        (json.dumps(sample("videos/match.mp4", "0", 4, [])), "'video_start' must be a number"),
        ('[{"role": "user", ', "not valid JSON"),
    ],
)
def test_bad_lines_are_refused_naming_the_line(tmp_path, public, line, what):
    path = public.parent / "bad.jsonl"
    path.write_text(public.read_text().splitlines()[0] + "\n\n" + line + "\n")
    with pytest.raises(LabelFileError, match=rf"bad\.jsonl:3: {what}"):
        read_public_jsonl(path)


def test_a_bad_public_file_stops_the_build(tmp_path, public, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [sample("gone.mp4", 0, 2, [[0, 1, "x"]])])
    code = bag2dataset(["--public-jsonl", str(bad), "--out", str(tmp_path / "d"), "--quiet"])
    assert code == 1
    assert f"{bad}:1: video 'gone.mp4' not found" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

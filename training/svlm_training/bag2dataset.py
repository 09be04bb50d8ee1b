"""``svlm-bag2dataset``: rosbag2 bags (camera + text), videos and public clips -> a dataset.

    svlm-bag2dataset BAG [BAG ...] --image-topic /camera/image_raw --text-topic /commentary \\
        --out data/kitchen
    svlm-bag2dataset BAG --image-topic /camera/image_raw --labels bag.vtt --out data/kitchen
    svlm-bag2dataset clip.mp4 --labels clip.srt --out data/clip
    svlm-bag2dataset BAG --image-topic ... --labels bag.vtt --public-jsonl train.jsonl \\
        --video-root videos/ --out data/mixed

Each bag, video file or public clip is one stream (an episode). The words come from a text
topic of the bag (``--text-topic``), or from one label file per bag or video (``--labels``:
WebVTT, SRT or JSONL, see ``label_files``; their times count from the first frame unless they
are absolute stamps, see ``label_timing``; ``--labels-offset`` shifts them), or, for public
clips, from the reference's training JSONL (``--public-jsonl``, see ``public_data``). One run
can mix all of these into one dataset, so one ``svlm-train`` trains on all of them. Questions
asked while recording, with their answers, come from ``--question-topic`` (see
``question_events``): training then teaches the narrator to answer them from its memory.

Frames are sampled and resized as the engine does (``--fps``, ``--max-pixels``,
``--min-pixels``); text is aligned to stream seconds (see ``alignment``); the result is written
under a temporary name and renamed into place at the end, so a failed build leaves nothing that
looks like a dataset.

Bag stamps (``--stamps``): ``header`` uses the messages' header stamps (camera clock), ``receive``
the bag's receive times. ``auto`` (default) uses header stamps when both topics have headers
(Image, CompressedImage, Narration), otherwise receive times for both: mixing two clocks would
misalign the text by the transport delay or worse (simulation time vs wall time). With
``--labels`` only the image topic decides. A video's stamps are its frames' times in the file.

Frames the node would reject (unsupported encoding, corrupt data) are skipped and counted per
reason in the manifest and the summary, as the node skips them; like the node, only frames the
sampler keeps are decoded, so only those are checked. A bag with no usable frame is refused.
Everything else that is wrong with a bag stops the build with an error that names it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from svlm_training.alignment import SecondAligner, StampsOutOfOrder, TextEvent
from svlm_training.bag_reading import (
    HEADER_TYPES,
    IMAGE_TYPES,
    NARRATION,
    TEXT_TYPES,
    BagError,
    BagSource,
    header_stamp,
    make_typestore,
    message_to_rgb,
)
from svlm_training.dataset_format import DatasetWriter
from svlm_training.episode_writing import FrameOffer, resize_frame, write_episode
from svlm_training.label_files import LabelFileError, read_cues
from svlm_training.label_timing import cue_events
from svlm_training.public_data import read_public_jsonl
from svlm_training.question_events import QuestionTimeline, read_question_events
from svlm_training.video_reading import VideoError, is_video
from svlm_training.video_sources import convert_public_clip, convert_video

__all__ = ["build_dataset", "build_parser", "convert_bag", "main", "read_text_events",
           "resize_frame", "resolve_stamps"]

STAMP_CHOICES = ("auto", "header", "receive")


def resolve_stamps(mode: str, image_type: str, text_type: str) -> str:
    """``header`` or ``receive`` for a bag whose topics have these message types."""
    both_have_headers = image_type in HEADER_TYPES and text_type in HEADER_TYPES
    if mode == "auto":
        return "header" if both_have_headers else "receive"
    if mode == "header" and not both_have_headers:
        without = image_type if image_type not in HEADER_TYPES else text_type
        raise BagError(f"--stamps header: {without} messages have no header; use auto or receive")
    return mode


def _message_time(message, receive_time: float, stamps: str, what: str, bag: BagSource,
                  topic: str, index: int) -> float:
    if stamps == "receive":
        return receive_time
    stamp = header_stamp(message)
    if stamp is None:
        raise BagError(
            f"{bag.path}: {what} message {index} on {topic!r} has a zero header stamp; "
            "rebuild with --stamps receive"
        )
    return stamp


def read_text_events(bag: BagSource, topic: str, text_type: str, stamps: str,
                     period: float, camera: str | None = None) -> list[TextEvent]:
    """Every text message of ``topic`` as a ``TextEvent`` on the chosen clock.

    A ``Narration`` describes the second that ends at its stamp (``stream_time`` is that
    second's end), so its time is moved back by half a period into that second. With receive
    times, its own ``latency`` (end of second to publication) is taken off first. The narrator
    publishes every camera's narration on one topic: ``camera`` picks one, and is required
    when the topic holds more than one.

    Raises:
        BagError: the topic has no message, or only empty text, or several cameras and no
            ``camera`` chosen (or the chosen one is absent).
    """
    events = []
    cameras: set[str] = set()
    for item in bag.messages(topic):
        message = item.message
        if text_type == NARRATION:
            cameras.add(message.camera)
            if camera is not None and message.camera != camera:
                continue
        time_ = _message_time(message, item.receive_time, stamps, "text", bag, topic, item.index)
        if text_type == NARRATION:
            if stamps == "receive":
                time_ -= float(message.latency)
            time_ -= period / 2
            text = "" if message.silent else message.text
        else:
            text = message.data
        events.append(TextEvent(time_, text))
    if text_type == NARRATION and camera is None and len(cameras) > 1:
        raise BagError(
            f"{bag.path}: {topic!r} has narration of several cameras "
            f"({', '.join(sorted(cameras))}); choose one with --camera"
        )
    if camera is not None and camera not in cameras:
        known = ", ".join(sorted(cameras)) or "none (not a Narration topic)"
        raise BagError(f"{bag.path}: no narration of camera {camera!r} on {topic!r}; cameras: "
                       f"{known}")
    if not any(event.text.strip() for event in events):
        raise BagError(
            f"{bag.path}: no text at all on {topic!r} ({len(events)} messages, none with words); "
            "a dataset needs something to learn to say"
        )
    return events


def _frame_offers(bag: BagSource, topic: str, image_type: str, stamps: str):
    for item in bag.messages(topic):
        stamp = _message_time(item.message, item.receive_time, stamps, "image", bag, topic,
                              item.index)
        yield FrameOffer(stamp, lambda m=item.message: message_to_rgb(m, image_type))


def _label_events(labels: Path, offset: float) -> tuple[list[TextEvent], dict]:
    """A label file's events, and what the manifest says of them."""
    labelled = cue_events(read_cues(labels), str(labels), offset)
    described = {"labels": str(labels), "labels_offset": offset,
                 "labels_clock": "absolute" if labelled.absolute else "stream",
                 "labels_cues": labelled.cues}
    return labelled.events, described


def convert_bag(bag_path: Path, episode: int, writer: DatasetWriter, args, typestore,
                labels: Path | None = None, labels_offset: float = 0.0) -> dict:
    """Read one bag into ``writer``; returns its manifest entry.

    The text comes from ``args.text_topic``, or from the label file ``labels`` when given
    (shifted by ``labels_offset`` s; stream times count from the bag's first camera frame).
    """
    started = time.perf_counter()
    with BagSource(bag_path, typestore) as bag:
        image_type = bag.check_topic(args.image_topic, IMAGE_TYPES, "image")
        text_type = None
        described: dict = {}
        if labels is None:
            text_type = bag.check_topic(args.text_topic, TEXT_TYPES, "text")
            # Without a text topic only the image topic decides.
        stamps = resolve_stamps(args.stamps, image_type, text_type or image_type)
        if labels is None:
            events = read_text_events(bag, args.text_topic, text_type, stamps, args.period,
                                      args.camera)
        else:
            events, described = _label_events(labels, labels_offset)
        aligner = SecondAligner(events, fps=args.fps, period=args.period,
                                relative_texts=described.get("labels_clock") == "stream")
        questions = None
        if getattr(args, "question_topic", None):
            if stamps != "receive":
                raise BagError(f"{bag.path}: --question-topic needs receive stamps (the "
                               "questions have no header); add --stamps receive")
            questions = QuestionTimeline(read_question_events(bag, args.question_topic))
        try:
            counts = write_episode(_frame_offers(bag, args.image_topic, image_type, stamps),
                                   aligner, writer, episode, args,
                                   total=bag.message_count(args.image_topic), desc=bag_path.name,
                                   questions=questions)
        except StampsOutOfOrder as error:
            hint = " (header stamps: try --stamps receive)" if stamps == "header" else ""
            raise BagError(f"{bag.path}: stamps out of order on {args.image_topic!r}: "
                           f"{error}{hint}") from error
        stats = counts.alignment
        if counts.seconds == 0:
            reasons = "; ".join(f"{n} x {r}" for r, n in counts.rejected.most_common()) or "none"
            raise BagError(
                f"{bag.path}: no second of usable frames on {args.image_topic!r} "
                f"({stats.frames_offered} frames; rejected: {reasons})"
            )
        return {
            "bag": str(bag_path),
            "storage": bag.storage,
            "files": bag.files,
            "duration": bag.duration,
            "image_topic": args.image_topic,
            "image_type": image_type,
            "text_topic": args.text_topic if labels is None else None,
            "text_type": text_type,
            **described,
            **({"question_topic": args.question_topic, "questions": len(questions),
                "questions_placed": questions.placed} if questions is not None else {}),
            "stamps": stamps,
            "seconds": counts.seconds,
            "silent_seconds": counts.silent,
            "words": counts.words,
            "frames_rejected": dict(counts.rejected),
            "alignment": asdict(stats),
            "build_seconds": time.perf_counter() - started,
        }


def _convert_sources(args, writer: DatasetWriter) -> list[dict]:
    """Every source of ``args`` (bags and videos in the order given, then public clips) as
    consecutive episodes; their manifest entries."""
    typestore = None
    sources = []
    labels = [Path(p) for p in args.labels or []]
    offsets = args.labels_offset or [0.0]
    for index, source in enumerate(Path(s) for s in args.sources):
        label = labels[index] if labels else None
        offset = offsets[index] if len(offsets) > 1 else offsets[0]
        if is_video(source):
            sources.append(convert_video(source, label, offset, len(sources), writer, args))
            continue
        if typestore is None:
            typestore = make_typestore()
        sources.append(convert_bag(source, len(sources), writer, args, typestore, label, offset))
    for jsonl in args.public_jsonl or []:
        for clip in read_public_jsonl(jsonl, args.video_root):
            sources.append(convert_public_clip(clip, len(sources), writer, args))
    return sources


def build_dataset(args) -> dict:
    """Build the dataset described by parsed ``args``; returns the manifest."""
    started = time.perf_counter()
    with DatasetWriter(args.out, overwrite=args.overwrite) as writer:
        sources = _convert_sources(args, writer)
        seconds = sum(s["seconds"] for s in sources)
        silent = sum(s["silent_seconds"] for s in sources)
        words = sum(s["words"] for s in sources)
        manifest = {
            "fps": args.fps,
            "period": args.period,
            "max_pixels": args.max_pixels,
            "min_pixels": args.min_pixels,
            "sources": sources,
            "seconds": seconds,
            "silent_seconds": silent,
            "silent_share": silent / seconds,
            "words": words,
            "words_per_second": words / seconds,
            "frames_rejected": sum(sum(s["frames_rejected"].values()) for s in sources),
            "bag_seconds": sum(s["duration"] for s in sources),
            "frame_bytes": writer.bytes_written,
            "build_seconds": time.perf_counter() - started,
        }
        writer.commit(manifest)
    return manifest


def _describe(source: dict) -> str:
    """Where one episode came from, for the summary."""
    if "bag" in source:
        words = (f"labels {source['labels']} ({source['labels_clock']} times)"
                 if source.get("labels") else f"topic {source['text_topic']}")
        return (f"{source['bag']}: {source['storage']} ({source['files']} file(s)), "
                f"{source['duration']:.1f} s of bag, text from {words}, stamps from "
                f"{source['stamps']}")
    if "public" in source:
        end = "end" if source["video_end"] is None else f"{source['video_end']:.1f}"
        return f"{source['public']}: {source['video']} {source['video_start']:.1f} s to {end}"
    return f"{source['video']}: {source['duration']:.1f} s of video, labels {source['labels']}"


def format_summary(manifest: dict, out: str) -> str:
    """The end-of-build summary printed to the user."""
    lines = [f"dataset written to {out}"]
    for source in manifest["sources"]:
        align = source["alignment"]
        dropped = align["text_before_stream"] + align["text_after_stream"] + align["text_in_gaps"]
        lines.append(
            f"  {_describe(source)}; {source['seconds']} seconds "
            f"({source['silent_seconds']} silent), {source['words']} words, "
            f"{sum(source['frames_rejected'].values())} frames rejected, "
            f"{dropped} of {align['text_events']} texts outside narrated seconds"
        )
        for reason, count in source["frames_rejected"].items():
            lines.append(f"      rejected {count} x {reason}")
    speed = manifest["bag_seconds"] / max(manifest["build_seconds"], 1e-9)
    lines.append(
        f"  total: {manifest['seconds']} seconds, silent share {manifest['silent_share']:.2f}, "
        f"{manifest['words_per_second']:.2f} words per second, "
        f"{manifest['frame_bytes'] / 2**20:.1f} MiB of frames; built in "
        f"{manifest['build_seconds']:.1f} s ({speed:.1f} s of bag per second)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svlm-bag2dataset",
        description="Turn rosbag2 bags (camera + text topic or label file), video files with "
                    "label files, and public clips into one narrator training dataset.",
    )
    parser.add_argument("sources", nargs="*", metavar="BAG_OR_VIDEO",
                        help="rosbag2 bag directories (sqlite3 or mcap, split or not), single "
                             ".db3/.mcap files, or video files (.mp4, .mkv, .webm...; need "
                             "--labels); each is one stream")
    parser.add_argument("--image-topic", default=None,
                        help="sensor_msgs/Image or sensor_msgs/CompressedImage topic (required "
                             "with bags)")
    parser.add_argument("--text-topic", default=None,
                        help="std_msgs/String or svlm_ros/msg/Narration topic with the words "
                             "(or give --labels)")
    parser.add_argument("--question-topic", default=None,
                        help="std_msgs/String topic of questions asked while recording, each "
                             'a JSON {"question": ..., "answer": ...}: a second gets the '
                             "question asked in it, and training teaches the answer (bags "
                             "with receive stamps; optional)")
    parser.add_argument("--labels", action="append", metavar="FILE",
                        help="WebVTT, SRT or JSONL (start/end/text) label file instead of a text "
                             "topic; one per bag or video, in their order (repeat the flag). "
                             "Times count from the first camera frame, unless they are absolute "
                             "stamps (>= 1e9 s) on the bag's clock")
    parser.add_argument("--labels-offset", action="append", type=float, metavar="SECONDS",
                        help="seconds added to every label time (later if > 0); one value for "
                             "all label files, or one per file (default 0)")
    parser.add_argument("--public-jsonl", action="append", metavar="FILE",
                        help="the StreamingVLM reference's training JSONL (LiveCC style: video "
                             "path, span and timed text per line); every line becomes an "
                             "episode after the bags and videos (repeat the flag)")
    parser.add_argument("--video-root", default=None,
                        help="folder the --public-jsonl video paths are relative to (default: "
                             "the JSONL's folder, then $DATASET_PATH)")
    parser.add_argument("--camera", default=None,
                        help="with a Narration text topic: the camera whose narration to use "
                             "(required when the topic holds several)")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--fps", type=float, default=2.0,
                        help="frames per second given to the model, as the node (default 2)")
    parser.add_argument("--period", type=float, default=1.0,
                        help="seconds per round, as the node (default 1)")
    parser.add_argument("--max-pixels", type=int, default=602112,
                        help="pixel budget per frame, as the node (default 602112 = 768 x 28 x 28)")
    parser.add_argument("--min-pixels", type=int, default=78400,
                        help="smallest frame area; smaller frames are upscaled (default 78400)")
    parser.add_argument("--stamps", choices=STAMP_CHOICES, default="auto",
                        help="header stamps, bag receive times, or auto: header when both "
                             "topics have headers, else receive (default auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset at --out (once the new one is complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def source_problem(args) -> str | None:
    """What is wrong with the combination of sources and text options, or None."""
    bags = [s for s in args.sources if not is_video(s)]
    videos = [s for s in args.sources if is_video(s)]
    if not args.sources and not args.public_jsonl:
        return "give at least one bag or video, or --public-jsonl"
    if bags and not args.image_topic:
        return "bags need --image-topic"
    if args.labels and args.text_topic:
        return "give either --text-topic or --labels, not both"
    if args.sources and not args.labels and not args.text_topic:
        return "bags and videos need --text-topic (bags only) or --labels"
    if videos and args.text_topic:
        return f"a video file has no topics: {videos[0]} needs --labels instead of --text-topic"
    if args.labels and len(args.labels) != len(args.sources):
        return (f"--labels: one label file per bag or video, in their order: got "
                f"{len(args.labels)} for {len(args.sources)}")
    if getattr(args, "question_topic", None) and (args.labels or videos):
        return "--question-topic reads questions from bags with a text topic, not label files"
    if args.labels_offset and not args.labels:
        return "--labels-offset needs --labels"
    if args.labels_offset and len(args.labels_offset) not in (1, len(args.labels)):
        return (f"--labels-offset: one value, or one per label file ({len(args.labels)}); got "
                f"{len(args.labels_offset)}")
    return None


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-bag2dataset``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = source_problem(args)
    if problem:
        parser.error(problem)
    if args.fps <= 0 or args.period <= 0:
        print("svlm-bag2dataset: error: --fps and --period must be > 0", file=sys.stderr)
        return 2
    if args.min_pixels < 28 * 28 or args.max_pixels < args.min_pixels:
        print("svlm-bag2dataset: error: need 784 <= --min-pixels <= --max-pixels", file=sys.stderr)
        return 2
    try:
        manifest = build_dataset(args)
    except (BagError, LabelFileError, VideoError, FileExistsError, ValueError) as error:
        print(f"svlm-bag2dataset: error: {error}", file=sys.stderr)
        return 1
    print(format_summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

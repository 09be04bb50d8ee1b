"""``svlm-bag2dataset``: rosbag2 bags (camera + text topics) -> a training dataset directory.

    svlm-bag2dataset BAG [BAG ...] --image-topic /camera/image_raw --text-topic /commentary \\
        --out data/kitchen

Each bag is one stream (an episode). Frames are sampled and resized as the engine does
(``--fps``, ``--max-pixels``, ``--min-pixels``); text is aligned to stream seconds (see
``alignment``); the result is written under a temporary name and renamed into place at the end,
so a failed build leaves nothing that looks like a dataset.

Stamps (``--stamps``): ``header`` uses the messages' header stamps (camera clock), ``receive``
the bag's receive times. ``auto`` (default) uses header stamps when both topics have headers
(Image, CompressedImage, Narration), otherwise receive times for both: mixing two clocks would
misalign the text by the transport delay or worse (simulation time vs wall time).

Frames the node would reject (unsupported encoding, corrupt data) are skipped and counted per
reason in the manifest and the summary, as the node skips them; like the node, only frames the
sampler keeps are decoded, so only those are checked. A bag with no usable frame is refused.
Everything else that is wrong with a bag stops the build with an error that names it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from svlm_ros.engine.frame_sampler import FrameRejected
from svlm_ros.engine.vision_input import fit_frame_size
from svlm_ros.image_conversion import ImageRejected
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


def resize_frame(frame: np.ndarray, max_pixels: int, min_pixels: int) -> np.ndarray:
    """Resize to the size the engine's ``VisionInput`` would (same fit, same interpolation).

    Stored frames are then already at their model size, and ``VisionInput.prepare`` leaves them
    as they are at training time.
    """
    height, width = fit_frame_size(*frame.shape[:2], max_pixels, min_pixels)
    if (height, width) == frame.shape[:2]:
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


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


def _rejection_reason(error: Exception) -> str:
    """A countable reason: the message without its per-frame numbers."""
    text = str(error)
    return text.split(";")[0].split(",")[0][:120]


def convert_bag(bag_path: Path, episode: int, writer: DatasetWriter, args,
                typestore) -> dict:
    """Read one bag into ``writer``; returns its manifest entry."""
    started = time.perf_counter()
    with BagSource(bag_path, typestore) as bag:
        image_type = bag.check_topic(args.image_topic, IMAGE_TYPES, "image")
        text_type = bag.check_topic(args.text_topic, TEXT_TYPES, "text")
        stamps = resolve_stamps(args.stamps, image_type, text_type)
        events = read_text_events(bag, args.text_topic, text_type, stamps, args.period,
                                  args.camera)
        aligner = SecondAligner(events, fps=args.fps, period=args.period)
        rejected: Counter[str] = Counter()
        counts = Counter()

        def write(completed) -> None:
            for second in completed:
                frames = [resize_frame(f, args.max_pixels, args.min_pixels)
                          for f in second.frames]
                writer.add(episode=episode, second=second.index, start=second.start,
                           end=second.end, text=second.text, received=second.received,
                           frames=frames)
                counts["seconds"] += 1
                counts["silent"] += not second.text
                counts["words"] += len(second.text.split())

        progress = tqdm(total=bag.message_count(args.image_topic), unit="frame",
                        desc=bag_path.name, disable=args.quiet, leave=False)
        with progress:
            for item in bag.messages(args.image_topic):
                progress.update()
                stamp = _message_time(item.message, item.receive_time, stamps, "image", bag,
                                      args.image_topic, item.index)
                message = item.message
                try:
                    # Decoded only if the sampler keeps it, as the node does.
                    write(aligner.offer(stamp, lambda m=message: message_to_rgb(m, image_type)))
                except StampsOutOfOrder as error:
                    hint = " (header stamps: try --stamps receive)" if stamps == "header" else ""
                    raise BagError(f"{bag.path}: stamps out of order on {args.image_topic!r}: "
                                   f"{error}{hint}") from error
                except (ImageRejected, FrameRejected) as error:
                    rejected[_rejection_reason(error)] += 1
                    continue
                progress.set_postfix(seconds=counts["seconds"], refresh=False)
            write(aligner.flush())
        seconds, silent, words = counts["seconds"], counts["silent"], counts["words"]
        stats = aligner.finish()
        if seconds == 0:
            reasons = "; ".join(f"{n} x {r}" for r, n in rejected.most_common()) or "none"
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
            "text_topic": args.text_topic,
            "text_type": text_type,
            "stamps": stamps,
            "seconds": seconds,
            "silent_seconds": silent,
            "words": words,
            "frames_rejected": dict(rejected),
            "alignment": asdict(stats),
            "build_seconds": time.perf_counter() - started,
        }


def build_dataset(args) -> dict:
    """Build the dataset described by parsed ``args``; returns the manifest."""
    started = time.perf_counter()
    typestore = make_typestore()
    sources = []
    with DatasetWriter(args.out, overwrite=args.overwrite) as writer:
        for episode, bag_path in enumerate(args.bags):
            sources.append(convert_bag(Path(bag_path), episode, writer, args, typestore))
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


def format_summary(manifest: dict, out: str) -> str:
    """The end-of-build summary printed to the user."""
    lines = [f"dataset written to {out}"]
    for source in manifest["sources"]:
        align = source["alignment"]
        dropped = align["text_before_stream"] + align["text_after_stream"] + align["text_in_gaps"]
        lines.append(
            f"  {source['bag']}: {source['storage']} ({source['files']} file(s)), "
            f"{source['duration']:.1f} s of bag, {source['seconds']} seconds "
            f"({source['silent_seconds']} silent), {source['words']} words, stamps from "
            f"{source['stamps']}, {sum(source['frames_rejected'].values())} frames rejected, "
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
        description="Turn rosbag2 bags (camera + text topics) into a narrator training dataset.",
    )
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="rosbag2 bag directories (sqlite3 or mcap, split or not) or single "
                             ".db3/.mcap files; each bag is one stream")
    parser.add_argument("--image-topic", required=True,
                        help="sensor_msgs/Image or sensor_msgs/CompressedImage topic")
    parser.add_argument("--text-topic", required=True,
                        help="std_msgs/String or svlm_ros/msg/Narration topic with the words")
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


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-bag2dataset``."""
    args = build_parser().parse_args(argv)
    if args.fps <= 0 or args.period <= 0:
        print("svlm-bag2dataset: error: --fps and --period must be > 0", file=sys.stderr)
        return 2
    if args.min_pixels < 28 * 28 or args.max_pixels < args.min_pixels:
        print("svlm-bag2dataset: error: need 784 <= --min-pixels <= --max-pixels", file=sys.stderr)
        return 2
    try:
        manifest = build_dataset(args)
    except (BagError, FileExistsError, ValueError) as error:
        print(f"svlm-bag2dataset: error: {error}", file=sys.stderr)
        return 1
    print(format_summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

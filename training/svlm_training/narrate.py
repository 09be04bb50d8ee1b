"""``svlm-narrate``: the narrator over a recording, without ROS: bag or video in, WebVTT out.

    svlm-narrate kitchen_bag --model runs/kitchen/model --image-topic /camera/image_raw \\
        --out kitchen                     # writes kitchen.vtt and kitchen.jsonl
    svlm-narrate walk.mp4 --model ckpt/StreamingVLM --out walk

The recording's frames go, with their stamps (a bag's header or receive times, a video's frame
times), into the engine's own ``StreamingSession``, the class the node runs, and every
completed second is narrated in stream time: however slow the model, no second is skipped.

Settings come as the node takes them: its parameter defaults, then a node parameter file
(``--params``, e.g. the robot's ``config/narrator.yaml``), then the model's
``svlm_settings.json`` for every setting the file does not give (fps, period, pixel budget,
token budget, text and vision windows, prompts). One change from the node: the temperature
defaults to 0 (greedy), so that labelling the same recording twice gives the same labels.

Outputs, one cue (one row) per narrated second, times in seconds from the first frame:

    OUT.vtt     WebVTT, the seconds with words (what the reference inference writes); edit it
                and give it to ``svlm-bag2dataset --labels`` to train on the corrected text
    OUT.jsonl   every second, silent ones too: start, end, text, silent, latency (s)

Both are written under temporary names as the seconds come and renamed at the end: a run that
fails or is interrupted midway leaves no file that looks complete.

This is the first of three commands: pre-label with the current narrator, correct the VTT by
hand, then ``svlm-bag2dataset SOURCE --labels OUT.vtt`` and ``svlm-train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import yaml
from tqdm import tqdm

from svlm_training.episode_writing import FRAME_REJECTIONS, FrameOffer, rejection_reason
from svlm_training.label_files import Cue, LabelFileError, vtt_time, write_jsonl, write_vtt
from svlm_training.video_reading import VideoError, VideoSource, is_video

STAMP_CHOICES = ("auto", "header", "receive")


class NarrateError(ValueError):
    """A recording, a model or options that cannot be used; the message says which."""


def stream_values(model: str, params: str | None, temperature: float, seed: int) -> tuple[
        dict, list[str]]:
    """The node's parameter values for this run, and the warnings the node would log.

    Defaults, then ``params`` (a node parameter file, its values given explicitly), then the
    model's ``svlm_settings.json`` for the model settings the file does not give, as the node
    configures; ``temperature`` and ``seed`` are this command's own.
    """
    from svlm_ros.engine.model_settings import read_settings, settings_path
    from svlm_ros.node.model_defaults import model_defaults
    from svlm_ros.node.parameters import defaults, problems

    values = defaults()
    given: set[str] = set()
    if params:
        try:
            document = yaml.safe_load(Path(params).read_text(encoding="utf-8")) or {}
            section = next(iter(document.values()))["ros__parameters"]
        except (OSError, yaml.YAMLError, StopIteration, KeyError, TypeError,
                AttributeError) as error:
            raise NarrateError(f"{params}: not a node parameter file (expected "
                               f"'/**: ros__parameters: ...'): {error}") from error
        unknown = sorted(set(section) - set(values))
        if unknown:
            raise NarrateError(f"{params}: unknown parameter {unknown[0]!r}")
        values.update(section)
        given.update(section)
    values.update(temperature=float(temperature), seed=int(seed), model_path=model)
    merged = model_defaults(read_settings(model), values, given, str(settings_path(model)))
    values.update(merged.changes)
    # The node's own checks (ranges, the cross-parameter rules of StreamConfig).
    found = problems(values)
    if found:
        raise NarrateError("; ".join(found))
    return values, merged.warnings


def bag_offers(path: Path, image_topic: str | None, stamps_mode: str,
               counter: list[int]) -> Iterator[FrameOffer]:
    """A bag's frames on ``image_topic`` (the only image topic when None); ``counter[0]`` gets
    the message count once the bag is open."""
    from svlm_training.bag2dataset import resolve_stamps
    from svlm_training.bag_reading import (
        IMAGE_TYPES,
        BagError,
        BagSource,
        header_stamp,
        make_typestore,
        message_to_rgb,
    )

    with BagSource(path, make_typestore()) as bag:
        if image_topic is None:
            images = sorted(t for t, kind in bag.topics().items() if kind in IMAGE_TYPES)
            if len(images) != 1:
                raise BagError(f"{path}: {len(images)} image topics ({', '.join(images) or 'none'}"
                               "); choose one with --image-topic")
            image_topic = images[0]
        image_type = bag.check_topic(image_topic, IMAGE_TYPES, "image")
        stamps = resolve_stamps(stamps_mode, image_type, image_type)
        counter[0] = bag.message_count(image_topic)
        for item in bag.messages(image_topic):
            stamp = item.receive_time if stamps == "receive" else header_stamp(item.message)
            if stamp is None:
                raise BagError(f"{path}: image message {item.index} has a zero header stamp; "
                               "use --stamps receive")
            yield FrameOffer(stamp, lambda m=item.message: message_to_rgb(m, image_type))


def video_offers(path: Path, counter: list[int]) -> Iterator[FrameOffer]:
    """A video file's frames at their times in the file."""
    with VideoSource(path) as video:
        counter[0] = video.frame_count
        for frame in video.frames():
            yield FrameOffer(frame.time, frame.rgb)


def output_paths(out: str) -> tuple[Path, Path]:
    """``(OUT.vtt, OUT.jsonl)`` for ``--out OUT`` (a ``.vtt`` or ``.jsonl`` ending is dropped)."""
    stem = Path(out)
    if stem.suffix.lower() in (".vtt", ".jsonl"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".vtt"), stem.with_name(stem.name + ".jsonl")


def narrate(args) -> dict:
    """Narrate ``args.source`` and write the outputs; returns the run's summary figures."""
    import torch

    from svlm_ros.engine.model_loading import load_model
    from svlm_ros.engine.model_settings import format_warning, read_settings
    from svlm_ros.engine.streaming_session import StreamingSession
    from svlm_ros.node.parameters import model_device, stream_config

    source = Path(args.source)
    vtt_path, jsonl_path = output_paths(args.out)
    existing = [p for p in (vtt_path, jsonl_path) if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    if is_video(source) and args.image_topic:
        raise NarrateError(f"{source} is a video file: it has no topics (drop --image-topic)")
    values, warnings = stream_values(args.model, args.params, args.temperature, args.seed)
    settings = read_settings(args.model)
    for warning in warnings:
        print(f"svlm-narrate: warning: {warning}", file=sys.stderr)
    # Offline: every completed second is narrated, none dropped as stale.
    config = dataclasses.replace(stream_config(values), max_pending_seconds=1 << 20)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = model_device(args.device or values["device"])
    loaded = load_model(args.model, device=device, dtype=args.dtype or values["dtype"],
                        attn_implementation=values["attn_implementation"])
    session = StreamingSession(loaded, config)
    counter = [0]
    offers = (video_offers(source, counter) if is_video(source)
              else bag_offers(source, args.image_topic, args.stamps, counter))
    rejected: Counter[str] = Counter()
    seconds = silent = 0
    started = time.perf_counter()
    temps = [p.with_name(f".{p.name}.incomplete-{os.getpid()}") for p in (vtt_path, jsonl_path)]
    vtt_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            vtt = stack.enter_context(temps[0].open("w", encoding="utf-8"))
            jsonl = stack.enter_context(temps[1].open("w", encoding="utf-8"))
            write_vtt(vtt, [])
            # Provenance for whoever corrects the file; NOTE blocks are comments to readers.
            vtt.write(f"\nNOTE svlm-narrate {source.name} with {Path(args.model).name}: fps "
                      f"{config.fps:g}, period {config.period:g} s, times from the first "
                      "frame\n")
            progress = stack.enter_context(tqdm(unit="frame", desc="svlm-narrate",
                                                disable=args.quiet))

            def narrate_pending() -> bool:
                """Narrate the completed seconds; False once ``--max-seconds`` is reached."""
                nonlocal seconds, silent
                while not (args.max_seconds and seconds >= args.max_seconds):
                    result, _ = session.run_pending()
                    if result is None:
                        return True
                    cue = Cue(result.start, result.end, result.text)
                    for line in _vtt_cue(cue):
                        vtt.write(line)
                    write_jsonl(jsonl, [{"start": round(result.start, 6),
                                         "end": round(result.end, 6), "text": result.text,
                                         "silent": result.silent,
                                         "latency": round(result.timings_ms["total"] / 1e3, 4)}])
                    seconds += 1
                    silent += result.silent
                    progress.set_postfix(seconds=seconds, refresh=False)
                return False

            last_stamp = None
            going = True
            for offer in offers:
                if progress.total is None and counter[0]:
                    progress.total = counter[0]
                progress.update()
                try:
                    session.sampler.offer(offer.stamp, offer.decode)
                except FRAME_REJECTIONS as error:
                    rejected[rejection_reason(error)] += 1
                    continue
                last_stamp = offer.stamp
                going = narrate_pending()
                if not going:
                    break
            if going and last_stamp is not None:
                # The end of the recording closes the last second, as the node does once its
                # end has passed on the camera clock.
                session.sampler.close_until(last_stamp + config.period)
                narrate_pending()
        if seconds == 0:
            reasons = "; ".join(f"{n} x {r}" for r, n in rejected.most_common()) or "none"
            raise NarrateError(f"{source}: no complete second to narrate (frames rejected: "
                               f"{reasons})")
        for temp, final in zip(temps, (vtt_path, jsonl_path), strict=True):
            temp.replace(final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    return {"seconds": seconds, "silent": silent, "rejected": sum(rejected.values()),
            "wall": wall, "vtt": str(vtt_path), "jsonl": str(jsonl_path),
            "format_warning": settings is not None and format_warning(settings) or "",
            "fps": config.fps, "period": config.period}


def _vtt_cue(cue: Cue) -> list[str]:
    """The lines ``write_vtt`` writes for one cue, without the file header."""
    import io

    text = io.StringIO()
    write_vtt(text, [cue])
    body = text.getvalue().removeprefix("WEBVTT\n")
    return [body] if body else []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="svlm-narrate",
        description="Narrate a bag or a video file with the streaming engine (no ROS) and write "
                    "WebVTT and JSONL, one cue per second: labels to correct by hand and give to "
                    "svlm-bag2dataset --labels.",
    )
    p.add_argument("source", metavar="BAG_OR_VIDEO",
                   help="rosbag2 bag (directory or .db3/.mcap file) or video file (.mp4, .mkv, "
                        ".webm...)")
    p.add_argument("--model", required=True, help="model directory (svlm_settings.json in it "
                                                  "gives the stream settings)")
    p.add_argument("--out", required=True,
                   help="output name: writes OUT.vtt and OUT.jsonl")
    p.add_argument("--image-topic", default=None,
                   help="bags: Image or CompressedImage topic (default: the bag's only one)")
    p.add_argument("--stamps", choices=STAMP_CHOICES, default="auto",
                   help="bags: header stamps, receive times, or auto (header when the images "
                        "have headers; default auto)")
    p.add_argument("--params", default=None,
                   help="node parameter file (e.g. config/narrator.yaml); its values win over "
                        "the model's svlm_settings.json, as in the node")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the node's device parameter, auto)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                   help="default: the node's dtype parameter (auto: bfloat16 on CUDA, float32 "
                        "on CPU)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 (default) is greedy and reproducible")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--max-seconds", type=int, default=0,
                   help="stop after this many narrated seconds (default 0: the whole recording)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's own choice)")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT.vtt/OUT.jsonl")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-narrate``."""
    args = build_parser().parse_args(argv)
    if args.max_seconds < 0 or args.torch_threads < 0:
        print("svlm-narrate: error: --max-seconds and --torch-threads must be >= 0",
              file=sys.stderr)
        return 2
    from svlm_ros.engine.model_settings import ModelSettingsError
    from svlm_training.bag_reading import BagError

    try:
        result = narrate(args)
    except (NarrateError, BagError, VideoError, LabelFileError, ModelSettingsError,
            FileExistsError, ValueError) as error:
        print(f"svlm-narrate: error: {error}", file=sys.stderr)
        return 1
    spoken = result["seconds"] - result["silent"]
    print(f"svlm-narrate: {result['seconds']} seconds narrated ({spoken} with words, "
          f"{result['silent']} silent; {vtt_time(result['seconds'] * result['period'])} of "
          f"stream) in {result['wall']:.1f} s; {result['rejected']} frames rejected\n"
          f"  wrote {result['vtt']} and {result['jsonl']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

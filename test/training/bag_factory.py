"""Real rosbag2 bags for the training tests, written with ``rosbags`` (no ROS needed).

A synthetic camera (a coloured card that changes every few seconds) and a text topic with
words in chosen seconds. Every bag is a real rosbag2 directory in sqlite3 or mcap storage that
``ros2 bag`` and rosbags read.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from svlm_training.bag_reading import make_typestore

#: Start of the synthetic stream on the camera clock (s): far from zero like a real clock.
START = 1_700_000_000.0
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 200, 30)]


def frame_for(second: float, height: int = 48, width: int = 64) -> np.ndarray:
    """The synthetic camera image at stream time ``second``: a card whose colour changes every
    3 s, with a bar that moves within the second (so the two frames of a second differ)."""
    colour = COLOURS[int(second // 3) % len(COLOURS)]
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colour
    x = int((second % 1.0) * (width - 8))
    image[:, x : x + 8] = 255
    return image


@dataclass
class BagSpec:
    """What ``write_bag`` writes.

    Attributes:
        seconds: Length of the camera stream.
        texts: Stream second -> words said in it.
        storage: ``sqlite3`` or ``mcap``.
        image: ``raw`` (sensor_msgs/Image) or ``compressed`` (CompressedImage, png or jpeg).
        encoding: Raw image encoding (``rgb8``, ``bgr8``, ``mono8``...).
        text_type: ``string`` (std_msgs/String) or ``narration`` (svlm_ros/msg/Narration).
        camera_hz: Frames per second of the camera.
        compression: rosbag2 compression (``file`` or ``message``, zstd) or None.
        frame_stamps: Optional override of the image header stamps (offsets from START).
        encodings: Optional per-frame encoding override (frame index -> encoding).
        split_at: Split the bag into two files at this stream time (s), or not at all.
        height, width: Camera image size.
        camera: Narration's ``camera`` field.
        other_camera: Also write Narration of a second camera (other words) on the same topic.
    """

    seconds: int = 8
    texts: dict[int, str] = field(default_factory=lambda: {1: "the card is red", 4: "now green"})
    storage: str = "sqlite3"
    image: str = "raw"
    codec: str = "png"
    encoding: str = "rgb8"
    text_type: str = "string"
    camera_hz: float = 4.0
    compression: str | None = None
    frame_stamps: list[float] | None = None
    encodings: dict[int, str] = field(default_factory=dict)
    split_at: float | None = None
    height: int = 48
    width: int = 64
    camera: str = "front"
    other_camera: str | None = None
    image_topic: str = "/camera/image"
    text_topic: str = "/commentary"
    extra_topics: dict[str, str] = field(
        default_factory=lambda: {"/rosout_like": "std_msgs/msg/String"})


def _stamp(typestore, seconds: float):
    Time = typestore.types["builtin_interfaces/msg/Time"]
    sec = int(seconds)
    return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def _header(typestore, seconds: float, frame_id: str = "camera"):
    Header = typestore.types["std_msgs/msg/Header"]
    return Header(stamp=_stamp(typestore, seconds), frame_id=frame_id)


def _image_message(typestore, spec: BagSpec, rgb: np.ndarray, stamp: float, encoding: str):
    if spec.image == "compressed":
        CompressedImage = typestore.types["sensor_msgs/msg/CompressedImage"]
        ok, data = cv2.imencode(f".{spec.codec}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        return CompressedImage(header=_header(typestore, stamp), format=spec.codec,
                               data=np.asarray(data, np.uint8).ravel())
    Image = typestore.types["sensor_msgs/msg/Image"]
    if encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == "bgra8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "mono16":  # little-endian, the 8-bit gray value in the high byte
        pixels = (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype("<u2") << 8).view(np.uint8)
    else:  # rgb8, or an encoding the node refuses (the bytes do not matter then)
        pixels = rgb
    height, width = rgb.shape[:2]
    step = pixels.size // height
    return Image(header=_header(typestore, stamp), height=height, width=width, encoding=encoding,
                 is_bigendian=0, step=step, data=np.ascontiguousarray(pixels).ravel())


def _text_message(typestore, spec: BagSpec, second: int, text: str):
    if spec.text_type == "narration":
        Narration = typestore.types["svlm_ros/msg/Narration"]
        end = START + second + 1
        return Narration(header=_header(typestore, end), camera=spec.camera,
                         stream_time=float(second + 1), text=text, silent=not text,
                         latency=0.2, cache_tokens=0), end + 0.2
    String = typestore.types["std_msgs/msg/String"]
    return String(data=text), START + second + 0.4


def write_bag(path: Path, spec: BagSpec | None = None,
              after: Callable[[Path], None] | None = None) -> Path:
    """Write a rosbag2 bag at ``path`` (a directory that must not exist yet)."""
    from rosbags.rosbag2 import StoragePlugin

    spec = spec or BagSpec()
    typestore = make_typestore()
    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    image_type = ("sensor_msgs/msg/CompressedImage" if spec.image == "compressed"
                  else "sensor_msgs/msg/Image")
    text_type = "svlm_ros/msg/Narration" if spec.text_type == "narration" else "std_msgs/msg/String"
    events = []  # (receive time, connection key, message)
    frames = int(spec.seconds * spec.camera_hz)
    for index in range(frames):
        offset = (spec.frame_stamps[index] if spec.frame_stamps is not None
                  else index / spec.camera_hz)
        encoding = spec.encodings.get(index, spec.encoding)
        image = frame_for(offset, spec.height, spec.width)
        message = _image_message(typestore, spec, image, START + offset, encoding)
        # Receive time: a little after capture, always in order (as a recorder sees it).
        events.append((START + index / spec.camera_hz + 0.01, "image", message))
    if spec.text_type == "narration":
        texts = {second: spec.texts.get(second, "") for second in range(spec.seconds - 1)}
    else:
        texts = spec.texts
    for second, text in texts.items():
        message, receive = _text_message(typestore, spec, second, text)
        events.append((receive, "text", message))
        if spec.other_camera is not None:
            other, receive = _text_message(typestore, spec, second, f"other view {second}")
            other.camera = spec.other_camera
            events.append((receive + 0.001, "text", other))
    events.sort(key=lambda event: event[0])
    if spec.split_at is None:
        _write_events(path, spec, typestore, plugin, image_type, text_type, events)
    else:
        # rosbags writes one file per bag; a split bag is two bags' files under one metadata.yaml
        # that lists both, as `ros2 bag record --max-bag-duration` leaves it.
        cut = START + spec.split_at
        parts = [[e for e in events if e[0] < cut], [e for e in events if e[0] >= cut]]
        documents, names = [], []
        path.mkdir(parents=True)
        for number, part in enumerate(parts):
            part_dir = path.parent / f".{path.name}.part{number}"
            _write_events(part_dir, spec, typestore, plugin, image_type, text_type, part)
            (storage_file,) = [f for f in part_dir.iterdir() if f.name != "metadata.yaml"]
            name = f"{path.name}_{number}{storage_file.suffix}"
            storage_file.rename(path / name)
            documents.append(yaml.safe_load((part_dir / "metadata.yaml").read_text()))
            names.append(name)
            shutil.rmtree(part_dir)
        info = documents[0]["rosbag2_bagfile_information"]
        second = documents[1]["rosbag2_bagfile_information"]
        info["relative_file_paths"] = names
        for entry, name in zip(info["files"] + second["files"], names, strict=True):
            entry["path"] = name
        info["files"] = info["files"] + second["files"]
        info["message_count"] += second["message_count"]
        end = (second["starting_time"]["nanoseconds_since_epoch"]
               + second["duration"]["nanoseconds"])
        info["duration"]["nanoseconds"] = end - info["starting_time"]["nanoseconds_since_epoch"]
        for topic, other in zip(info["topics_with_message_count"],
                                second["topics_with_message_count"], strict=True):
            topic["message_count"] += other["message_count"]
        (path / "metadata.yaml").write_text(yaml.safe_dump(documents[0]))
    if after is not None:
        after(path)
    return path


def _write_events(path, spec, typestore, plugin, image_type, text_type, events) -> None:
    """Write ``events`` (receive time, 'image' or 'text', message) as one rosbag2 bag."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer

    writer = Writer(path, version=9, storage_plugin=plugin)
    if spec.compression:
        mode = CompressionMode.FILE if spec.compression == "file" else CompressionMode.MESSAGE
        writer.set_compression(mode, CompressionFormat.ZSTD)
    with writer:
        connections = {
            "image": writer.add_connection(spec.image_topic, image_type, typestore=typestore),
            "text": writer.add_connection(spec.text_topic, text_type, typestore=typestore),
        }
        for topic, msgtype in spec.extra_topics.items():
            writer.add_connection(topic, msgtype, typestore=typestore)
        types = {"image": image_type, "text": text_type}
        for receive, key, message in events:
            data = typestore.serialize_cdr(message, types[key])
            writer.write(connections[key], int(receive * 1e9), data)

"""Record the simulated world as a rosbag2 bag (sqlite3 or mcap) with ``rosbags``: no ROS needed.

The bag holds what a robot's recording would: a camera topic (``sensor_msgs/Image`` rgb8, or
``sensor_msgs/CompressedImage`` png/jpeg, stamped in the header) and the ground-truth text as
``std_msgs/String`` (no header: its time is the recorder's receive time, the middle of its
second). Quiet seconds publish no text, as a commentator says nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from svlm_ros.sim.world import World

STORAGES = ("sqlite3", "mcap")
IMAGE_FORMATS = ("raw", "png", "jpeg")


@dataclass(frozen=True)
class BagSettings:
    """What ``write_world_bag`` records.

    Attributes:
        seconds: Stream length.
        camera_hz: Camera frames per second (the engine samples 2 per second of them).
        storage: ``sqlite3`` (.db3) or ``mcap``.
        image_format: ``raw`` (Image rgb8), ``png`` or ``jpeg`` (CompressedImage).
        start_stamp: Camera-clock time of stream second 0 (a real clock is far from 0).
        phase: World time (s) of the first frame, in ``[0, 1 / camera_hz)``. A camera is not
            synchronised with the world: a narrator's seconds start at the first frame it
            gets, so its frames sit anywhere within a frame interval of the world's seconds.
            Bags with a phase teach a model that; the ground truth stays per world second.
        image_topic, text_topic: Topic names.
        frame_id: Header frame of the images.
    """

    seconds: int = 60
    camera_hz: float = 30.0
    storage: str = "mcap"
    image_format: str = "raw"
    start_stamp: float = 1_750_000_000.0
    phase: float = 0.0
    image_topic: str = "/camera/image_raw"
    text_topic: str = "/svlm/ground_truth"
    frame_id: str = "sim_camera"

    def __post_init__(self):
        if self.seconds < 1:
            raise ValueError(f"seconds must be >= 1, got {self.seconds}")
        if not 0 < self.camera_hz <= 120:
            raise ValueError(f"camera_hz must be in (0, 120], got {self.camera_hz}")
        if not 0 <= self.phase < 1 / self.camera_hz:
            raise ValueError(f"phase must be in [0, 1 / camera_hz = {1 / self.camera_hz:g}), "
                             f"got {self.phase}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got "
                             f"{self.image_format!r}")


def _time(typestore, seconds: float):
    whole = int(seconds)
    nanoseconds = int(round((seconds - whole) * 1e9))
    if nanoseconds >= 1_000_000_000:
        whole, nanoseconds = whole + 1, nanoseconds - 1_000_000_000
    return typestore.types["builtin_interfaces/msg/Time"](sec=whole, nanosec=nanoseconds)


def _nanoseconds(seconds: float) -> int:
    return int(round(seconds * 1e9))


def write_world_bag(
    path: str | Path,
    world: World,
    settings: BagSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``settings.seconds`` of ``world`` as a bag directory at ``path``.

    The bag is written under a temporary name next to ``path`` and renamed when complete, so
    an interrupted run leaves nothing that looks like a bag.

    Args:
        path: The bag directory to create (must not exist).
        world: The world to record.
        settings: What to record.
        progress: Called with each finished stream second (for a progress bar).

    Returns:
        The bag directory.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    settings = settings or BagSettings()
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose a new bag name or remove it")
    # Written as <parent>/.<name>.partial/<name> (the storage files inside are named after the
    # bag), then moved into place.
    staging = path.with_name(f".{path.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    partial = staging / path.name
    typestore = get_typestore(Stores.ROS2_KILTED)
    Image = typestore.types["sensor_msgs/msg/Image"]
    CompressedImage = typestore.types["sensor_msgs/msg/CompressedImage"]
    String = typestore.types["std_msgs/msg/String"]
    Header = typestore.types["std_msgs/msg/Header"]
    plugin = StoragePlugin.MCAP if settings.storage == "mcap" else StoragePlugin.SQLITE3
    raw = settings.image_format == "raw"
    image_type = "sensor_msgs/msg/Image" if raw else "sensor_msgs/msg/CompressedImage"
    try:
        with Writer(partial, version=9, storage_plugin=plugin) as writer:
            images = writer.add_connection(settings.image_topic, image_type, typestore=typestore)
            texts = writer.add_connection(settings.text_topic, "std_msgs/msg/String",
                                          typestore=typestore)
            frames_per_second = settings.camera_hz
            frame = 0
            for second in range(settings.seconds):
                sentence = world.sentence_at(second)
                text_time = settings.start_stamp + second + 0.5
                text_written = not sentence
                while settings.phase + frame / frames_per_second < second + 1:
                    t = settings.phase + frame / frames_per_second
                    stamp = settings.start_stamp + t
                    if not text_written and stamp >= text_time:
                        writer.write(texts, _nanoseconds(text_time), typestore.serialize_cdr(
                            String(data=sentence), "std_msgs/msg/String"))
                        text_written = True
                    picture = world.render(t)
                    header = Header(stamp=_time(typestore, stamp), frame_id=settings.frame_id)
                    if raw:
                        height, width = picture.shape[:2]
                        message = Image(header=header, height=height, width=width,
                                        encoding="rgb8", is_bigendian=0, step=width * 3,
                                        data=picture.reshape(-1))
                    else:
                        ext = ".png" if settings.image_format == "png" else ".jpg"
                        ok, data = cv2.imencode(ext, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                        if not ok:
                            raise RuntimeError(f"OpenCV could not encode a frame as {ext}")
                        message = CompressedImage(header=header, format=settings.image_format,
                                                  data=np.asarray(data, np.uint8).reshape(-1))
                    # Received a few milliseconds after capture, as a recorder sees it.
                    writer.write(images, _nanoseconds(stamp + 0.005),
                                 typestore.serialize_cdr(message, image_type))
                    frame += 1
                if not text_written:
                    writer.write(texts, _nanoseconds(text_time), typestore.serialize_cdr(
                        String(data=sentence), "std_msgs/msg/String"))
                if progress is not None:
                    progress(second)
        partial.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path

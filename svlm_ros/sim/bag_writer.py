"""Record the simulated world as a rosbag2 bag (sqlite3 or mcap) with ``rosbags``: no ROS needed.

The bag holds what a robot's recording would: a camera topic (``sensor_msgs/Image`` rgb8, or
``sensor_msgs/CompressedImage`` png/jpeg, stamped in the header) and the ground-truth text as
``std_msgs/String`` (no header: its time is the recorder's receive time, the middle of its
second). Quiet seconds publish no text, as a commentator says nothing. With
``question_share`` the bag also holds memory questions (``svlm_ros.sim.questions``) on
``question_topic``: ``std_msgs/String`` JSON ``{"question": ..., "answer": ...}``, asked a
quarter into the second after the one they follow, for ``svlm-bag2dataset --question-topic``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from svlm_ros.sim.questions import training_questions
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
        image_topic, text_topic, question_topic: Topic names.
        frame_id: Header frame of the images.
        question_share: About this share of seconds get a memory question (0: none, no
            question topic); see ``svlm_ros.sim.questions.training_questions``.
        question_min_age: A question is about a leaving at least this many seconds old.
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
    question_topic: str = "/svlm/question"
    question_share: float = 0.0
    question_min_age: int = 10

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
        if not 0.0 <= self.question_share <= 1.0:
            raise ValueError(f"question_share must be in [0, 1], got {self.question_share}")
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
            questions = {}
            if settings.question_share:
                asking = writer.add_connection(settings.question_topic, "std_msgs/msg/String",
                                               typestore=typestore)
                questions = {q.second + 1: q for q in training_questions(
                    world, settings.seconds, share=settings.question_share,
                    min_age=settings.question_min_age)}
            frames_per_second = settings.camera_hz
            frame = 0

            def write_untimed(untimed: list, before: float) -> None:
                while untimed and untimed[0][0] <= before:
                    time_, connection, data = untimed.pop(0)
                    writer.write(connection, _nanoseconds(time_), typestore.serialize_cdr(
                        String(data=data), "std_msgs/msg/String"))
            for second in range(settings.seconds):
                # This second's messages without a stamp of their own, in time order: a
                # question (asked after the second before was narrated, so it belongs to this
                # one) a quarter in, the ground truth half-way; written among the frames in
                # time order, as a recorder writes them.
                untimed = []
                if second in questions:
                    asked = questions[second]
                    untimed.append((settings.start_stamp + second + 0.25, asking, json.dumps(
                        {"question": asked.question, "answer": asked.answer})))
                sentence = world.sentence_at(second)
                if sentence:
                    untimed.append((settings.start_stamp + second + 0.5, texts, sentence))

                while settings.phase + frame / frames_per_second < second + 1:
                    t = settings.phase + frame / frames_per_second
                    stamp = settings.start_stamp + t
                    write_untimed(untimed, stamp)
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
                write_untimed(untimed, float("inf"))
                if progress is not None:
                    progress(second)
        partial.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path

"""Read camera frames and text from rosbag2 bags without ROS, through ``rosbags``.

Supported: rosbag2 directories in sqlite3 (``.db3``) or mcap storage, split into several
files or not (the bag's ``metadata.yaml`` lists them), compressed per file or per message as
rosbags reads them. Images are ``sensor_msgs/msg/Image`` (every encoding the node accepts) or
``sensor_msgs/msg/CompressedImage``; text is ``std_msgs/msg/String`` or
``svlm_ros/msg/Narration`` (the narrator's own output, e.g. corrected by hand).

``svlm_ros/msg/Narration`` is not in rosbags' built-in type stores. It is registered from this
repository's own ``msg/Narration.msg`` text, found where each kind of install puts it: a ROS
install prefix (``share/svlm_ros/msg`` on ``AMENT_PREFIX_PATH``), the pip install prefix (the
wheel ships the file as data there, or beside the packages with ``--target``) or the source
checkout.

Every failure a user can cause with a bad bag becomes a ``BagError`` whose message names the
bag and the problem: no bag at the path, a file that is not a bag, corrupt or truncated
storage, a missing topic (with the topics the bag has), a topic of the wrong type.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svlm_ros.image_conversion import compressed_image_to_rgb, image_message_to_rgb

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
NARRATION = "svlm_ros/msg/Narration"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
TEXT_TYPES = (STRING, NARRATION)
#: Message types whose messages carry a ``std_msgs/Header`` with a stamp.
HEADER_TYPES = frozenset({IMAGE, COMPRESSED_IMAGE, NARRATION})


class BagError(ValueError):
    """A bag that cannot be used; the message names the bag and what is wrong with it."""


def narration_msg_file() -> Path:
    """The ``Narration.msg`` definition of this package, wherever the install put it.

    Raises:
        BagError: no copy was found (a broken install).
    """
    candidates = []
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "svlm_ros" / "msg" / "Narration.msg")
    # pip installs the file as data under the environment prefix (see setup.py data_files),
    # or beside the packages with `pip install --target DIR`.
    candidates.append(Path(sys.prefix) / "share" / "svlm_ros" / "msg" / "Narration.msg")
    candidates.append(Path(__file__).resolve().parents[1] / "share" / "svlm_ros" / "msg"
                      / "Narration.msg")
    # A source checkout: training/svlm_training/bag_reading.py -> <repo>/msg/Narration.msg.
    candidates.append(Path(__file__).resolve().parents[2] / "msg" / "Narration.msg")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BagError(
        "cannot find svlm_ros' msg/Narration.msg (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall with `pip install .[train]` from the repository"
    )


def make_typestore():
    """rosbags' ROS 2 Kilted type store with ``svlm_ros/msg/Narration`` registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    text = narration_msg_file().read_text(encoding="utf-8")
    typestore.register(get_types_from_msg(text, NARRATION))
    return typestore


@dataclass(frozen=True)
class BagMessage:
    """One deserialized message.

    Attributes:
        index: Position among the messages of its topic (0-based), for error messages.
        receive_time: When the recorder received it (s, the bag's timestamp).
        message: The deserialized message (a rosbags dataclass).
    """

    index: int
    receive_time: float
    message: Any


def header_stamp(message: Any) -> float | None:
    """The header stamp in seconds, or None when the message has none or it is zero.

    A zero stamp is what a publisher that never set the header leaves; it is no clock.
    """
    header = getattr(message, "header", None)
    if header is None:
        return None
    seconds = header.stamp.sec + header.stamp.nanosec * 1e-9
    return seconds if seconds != 0 else None


def message_to_rgb(message: Any, msgtype: str, max_pixels: int | None = None) -> np.ndarray:
    """An image message (raw or compressed) as an RGB uint8 ``(H, W, 3)`` array.

    Raises:
        svlm_ros.image_conversion.ImageRejected: unsupported encoding or corrupt data.
    """
    limits = {} if max_pixels is None else {"max_pixels": max_pixels}
    if msgtype == COMPRESSED_IMAGE:
        return compressed_image_to_rgb(format=message.format, data=message.data, **limits)
    return image_message_to_rgb(message, **limits)


class BagSource:
    """One rosbag2 bag opened for reading; use as a context manager.

    Args:
        path: The bag directory (holding ``metadata.yaml``), one of its storage files (the
            whole bag is read), or a lone ``.db3`` / ``.mcap`` file.
        typestore: Type store to deserialize with (``make_typestore()`` by default).

    Raises:
        BagError: no bag there, or its metadata or storage cannot be read.
    """

    def __init__(self, path: str | Path, typestore=None):
        path = Path(path)
        if not path.exists():
            raise BagError(
                f"{path}: no such bag (expected a rosbag2 directory or a .db3/.mcap file)"
            )
        if path.is_file() and (path.parent / "metadata.yaml").is_file():
            path = path.parent  # one file of a (split) bag: read the whole bag
        if path.is_file() and path.suffix not in (".db3", ".mcap"):
            raise BagError(
                f"{path}: not a rosbag2 bag (a bag is a folder with metadata.yaml and .db3 or "
                ".mcap files, or a single .db3 or .mcap file)"
            )
        self.path = path
        self.typestore = typestore or make_typestore()
        self._reader = None

    def __enter__(self) -> BagSource:
        from rosbags.rosbag2 import Reader

        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as error:  # noqa: BLE001 - any failure here means an unusable bag
            raise BagError(
                f"{self.path}: cannot open the bag: {error} (a corrupt file, or a recording cut "
                "short: `ros2 bag reindex` or `mcap recover` may repair it)"
            ) from error
        self._reader = reader
        return self

    def __exit__(self, *exc_info) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    @property
    def reader(self):
        if self._reader is None:
            raise RuntimeError("BagSource is not open; use it as a context manager")
        return self._reader

    @property
    def storage(self) -> str:
        """``sqlite3`` or ``mcap``."""
        if self.path.is_file():
            return "sqlite3" if self.path.suffix == ".db3" else "mcap"
        return str(self._metadata().get("storage_identifier", "unknown"))

    @property
    def files(self) -> int:
        """Storage files of the bag (more than one for a split bag)."""
        if self.path.is_file():
            return 1
        return len(self._metadata().get("relative_file_paths", []))

    def _metadata(self) -> dict:
        import yaml

        document = yaml.safe_load((self.path / "metadata.yaml").read_text(encoding="utf-8"))
        return document.get("rosbag2_bagfile_information", {})

    @property
    def duration(self) -> float:
        """Seconds from the first to the last message (receive time)."""
        return self.reader.duration * 1e-9

    def topics(self) -> dict[str, str]:
        """Every topic of the bag with its message type."""
        return {name: info.msgtype for name, info in self.reader.topics.items()}

    def message_count(self, topic: str) -> int:
        info = self.reader.topics.get(topic)
        return int(info.msgcount) if info is not None else 0

    def check_topic(self, topic: str, allowed_types: tuple[str, ...], role: str) -> str:
        """The type of ``topic``, which must exist with one of ``allowed_types``.

        Raises:
            BagError: the topic is missing (the message lists the bag's topics) or of
                another type.
        """
        topics = self.topics()
        if topic not in topics:
            listing = "\n".join(f"  {name}  [{kind}]" for name, kind in sorted(topics.items()))
            raise BagError(
                f"{self.path}: no {role} topic {topic!r} in this bag. Its topics:\n"
                + (listing or "  (none)")
            )
        msgtype = topics[topic]
        if msgtype not in allowed_types:
            raise BagError(
                f"{self.path}: {role} topic {topic!r} is {msgtype}; expected one of "
                f"{', '.join(allowed_types)}"
            )
        return msgtype

    def messages(self, topic: str) -> Iterator[BagMessage]:
        """Deserialized messages of one topic, in the bag's (receive time) order.

        Raises:
            BagError: the storage is corrupt or truncated, or a message cannot be decoded.
        """
        connections = [c for c in self.reader.connections if c.topic == topic]
        index = 0
        iterator = self.reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 - storage errors of any backend
                raise BagError(
                    f"{self.path}: corrupt or truncated storage while reading {topic!r} "
                    f"after {index} messages: {type(error).__name__}: {error}"
                ) from error
            try:
                message = self.typestore.deserialize_cdr(raw, connection.msgtype)
            except Exception as error:  # noqa: BLE001 - truncated or foreign message bytes
                raise BagError(
                    f"{self.path}: message {index} of {topic!r} cannot be decoded as "
                    f"{connection.msgtype} (corrupt data?): {type(error).__name__}: {error}"
                ) from error
            yield BagMessage(index, timestamp * 1e-9, message)
            index += 1

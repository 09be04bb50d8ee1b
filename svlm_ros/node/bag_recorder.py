"""Record live ROS messages into an mcap (or sqlite3) rosbag2 bag, from inside a node.

``ros2 bag record`` is not everywhere (not on this project's machines, where ROS comes from
PyPI wheels); this writes the same format with ``rosbags``: each message is serialized by
rclpy (CDR, exactly the bytes on the wire) and written with its receive time. Foxglove and
``ros2 bag`` open the result. The bag is written under a temporary name and moved into place
on ``close()``, so a crash leaves no bag that looks complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rclpy.serialization import serialize_message


def _typestore_with_package_messages():
    """rosbags' Kilted type store plus this package's messages (from the installed .msg)."""
    from ament_index_python.packages import get_package_share_directory
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    msg_dir = Path(get_package_share_directory("svlm_ros")) / "msg"
    types = {}
    for definition in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(definition.read_text(encoding="utf-8"),
                                        f"svlm_ros/msg/{definition.stem}"))
    typestore.register(types)
    return typestore


class BagRecorder:
    """Writes messages of declared topics to a bag.

    Args:
        path: Bag directory to create (must not exist).
        topics: Topic name -> message type name (``sensor_msgs/msg/Image``).
        storage: ``mcap`` (default; Foxglove opens it) or ``sqlite3``.
    """

    def __init__(self, path: str | Path, topics: dict[str, str], storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; choose another bag name")
        self._staging = self.path.with_name(f".{self.path.name}.partial")
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir(parents=True)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        typestore = _typestore_with_package_messages()
        self._writer = Writer(self._staging / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections = {
            topic: self._writer.add_connection(topic, msgtype, typestore=typestore)
            for topic, msgtype in topics.items()
        }
        self.counts = dict.fromkeys(topics, 0)
        self.closed = False

    def write(self, topic: str, message: Any, time_ns: int) -> None:
        """Append ``message`` (an rclpy message object) received at ``time_ns``."""
        if self.closed:
            return
        self._writer.write(self._connections[topic], time_ns, serialize_message(message))
        self.counts[topic] += 1

    def close(self) -> Path:
        """Finish the bag and move it into place; returns its path."""
        if not self.closed:
            self.closed = True
            self._writer.close()
            (self._staging / self.path.name).rename(self.path)
            shutil.rmtree(self._staging, ignore_errors=True)
        return self.path

    def abandon(self) -> None:
        """Drop an unfinished bag (nothing that looks complete is left)."""
        if not self.closed:
            self.closed = True
            try:
                self._writer.close()
            finally:
                shutil.rmtree(self._staging, ignore_errors=True)

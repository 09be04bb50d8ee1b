"""The narrator node (foundation stub).

Serves ``ask`` (``svlm_ros/srv/Ask``) under the node's namespace. No model is loaded
yet, so every question is answered with ``success=False``. The node uses relative names
only: started with ``-r __ns:=/svlm`` (or by ``launch/narrator.launch.py``) it is
``/svlm/narrator`` and serves ``/svlm/ask``.
"""

import time

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from svlm_ros.srv import Ask


class NarratorNode(Node):
    """Declares the parameters and serves ``ask``."""

    def __init__(self) -> None:
        super().__init__("narrator")
        self.declare_parameter(
            "model_path",
            "",
            ParameterDescriptor(
                description="Checkpoint directory loaded with from_pretrained.",
                read_only=True,
            ),
        )
        self.declare_parameter(
            "default_camera",
            "camera",
            ParameterDescriptor(description="Camera that `ask` uses when the request names none."),
        )
        self._ask_service = self.create_service(Ask, "ask", self._on_ask)
        self.get_logger().info(f"serving {self.resolve_service_name('ask')}")

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        started = time.monotonic()
        response.success = False
        response.answer = ""
        response.message = "model not loaded"
        response.latency = time.monotonic() - started
        return response


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or shutdown; returns the process exit status."""
    rclpy.init(args=args)
    node = None
    try:
        node = NarratorNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0

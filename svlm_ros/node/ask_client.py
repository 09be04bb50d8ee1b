"""``svlm-ask``: ask the narrator a question from the command line.

    svlm-ask "What is on the table?"
    svlm-ask --camera front --timeout 30 "Is the door open?"
    svlm-ask --service /robot2/svlm/ask "What just happened?"

Prints the answer on stdout and exits 0; on failure (no such service, no answer in time, or the
narrator refused: empty question, unknown camera, nothing seen yet, not active) prints why on
stderr and exits 1. Arguments after ``--ros-args`` go to ROS (e.g. ``-r __ns:=/robot2``).
"""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_SERVICE = "/svlm/ask"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="svlm-ask",
        description="Ask the svlm_ros narrator a question about what a camera has seen.",
    )
    parser.add_argument("question", help="the question, in plain language")
    parser.add_argument(
        "--camera", default="", help="camera name (default: the narrator's default camera)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the service and for the answer (default: 30)",
    )
    parser.add_argument(
        "--service", default=DEFAULT_SERVICE, help=f"ask service name (default: {DEFAULT_SERVICE})"
    )
    arguments = parser.parse_args(argv)
    if arguments.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {arguments.timeout}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit status (0 answered, 1 failed)."""
    import rclpy
    from rclpy.utilities import remove_ros_args

    from svlm_ros.srv import Ask

    full = sys.argv if argv is None else [sys.argv[0], *argv]
    arguments = parse_arguments(remove_ros_args(full)[1:])
    rclpy.init(args=full)
    node = rclpy.create_node("svlm_ask")
    try:
        client = node.create_client(Ask, arguments.service)
        deadline = time.monotonic() + arguments.timeout
        if not client.wait_for_service(timeout_sec=arguments.timeout):
            print(
                f"svlm-ask: service {arguments.service} not available after "
                f"{arguments.timeout:g} s (is the narrator running, in this ROS_DOMAIN_ID?)",
                file=sys.stderr,
            )
            return 1
        future = client.call_async(Ask.Request(question=arguments.question,
                                               camera=arguments.camera))
        rclpy.spin_until_future_complete(
            node, future, timeout_sec=max(0.1, deadline - time.monotonic())
        )
        if not future.done():
            client.remove_pending_request(future)
            print(f"svlm-ask: no answer within {arguments.timeout:g} s", file=sys.stderr)
            return 1
        response = future.result()
        if not response.success:
            print(f"svlm-ask: {response.message}", file=sys.stderr)
            return 1
        print(response.answer)
        return 0
    except KeyboardInterrupt:
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()

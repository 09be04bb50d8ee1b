"""The installed ``sim_camera`` node publishes the simulated world over real DDS."""

from __future__ import annotations

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import spin_until
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from svlm_ros.msg import Narration
from svlm_ros.sim.world import World, WorldConfig

START = 1_750_000_000.0


def test_sim_time_camera_publishes_the_world_clock_and_ground_truth(
    spawn_node, ros_node, executor
):
    seconds, rate = 6, 10.0
    images, truths, clocks = [], [], []
    reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    ros_node.create_subscription(Image, "/sim/camera/image_raw", images.append, reliable)
    ros_node.create_subscription(Narration, "/sim/ground_truth", truths.append, 50)
    ros_node.create_subscription(Clock, "/clock", clocks.append, 200)
    camera = spawn_node("svlm_ros", "sim_camera", [
        "--ros-args", "-r", "__ns:=/sim", "-p", "seed:=11", "-p", f"rate:={rate}",
        "-p", "width:=64", "-p", "height:=48", "-p", "sim_time:=true", "-p", "speed:=2.0",
        "-p", f"seconds:={seconds}", "-p", "reliable:=true", "-p", f"start_stamp:={START}",
        "-p", "wait_for_subscribers:=1",
    ])
    assert spin_until(executor, lambda: camera.poll() is not None, timeout=60.0), (
        camera.describe())
    assert camera.poll() == 0, camera.describe()
    # The camera waited for acknowledgements before exiting; what it sent may still sit in this
    # process's queues, so take it before counting.
    spin_until(executor, lambda: len(truths) >= seconds and len(images) >= seconds * rate,
               timeout=5.0)
    world = World(WorldConfig(seed=11, width=64, height=48))
    # The world waited for this subscriber: every frame arrived, reliably, in order.
    assert len(images) == seconds * rate, camera.describe()
    for message in images:
        t = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9 - START
        frame = round(t * rate)
        assert abs(t - frame / rate) < 1e-6
        picture = np.frombuffer(bytes(message.data), np.uint8).reshape(48, 64, 3)
        assert np.array_equal(picture, world.render(frame / rate))
    # Ground truth: every second, stamped with its end like a narration, silent when quiet.
    assert [m.text for m in truths] == [world.sentence_at(s) for s in range(seconds)]
    assert [m.silent for m in truths] == [not world.sentence_at(s) for s in range(seconds)]
    assert [m.header.stamp.sec - int(START) for m in truths] == list(range(1, seconds + 1))
    stamps = [c.clock.sec + c.clock.nanosec * 1e-9 - START for c in clocks]
    assert stamps == sorted(stamps) and stamps[-1] >= seconds - 1.0


def test_bad_parameters_are_refused_with_a_reason(spawn_node, ros_node, executor):
    camera = spawn_node("svlm_ros", "sim_camera", ["--ros-args", "-p", "rate:=0.0"])
    assert spin_until(executor, lambda: camera.poll() is not None, timeout=30.0)
    assert camera.poll() != 0
    assert "rate must be in (0, 120]" in camera.output()

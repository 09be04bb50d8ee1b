"""``svlm-sim``: record the simulated world as bags, or print its ground truth.

    svlm-sim bag OUT [--seconds 60] [--storage mcap|sqlite3] [--format raw|png|jpeg]
                     [--rate 30] [--seed 0] [--size 224x168]
    svlm-sim truth [--seconds 60] [--seed 0]

The live camera is a ROS node: ``sim_camera`` (``ros2 run svlm_ros sim_camera``).
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from svlm_ros.sim.bag_writer import IMAGE_FORMATS, STORAGES, BagSettings, write_world_bag
from svlm_ros.sim.world import World, WorldConfig


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 224x168, got {text!r}") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svlm-sim", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def world_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
        sub.add_argument("--seconds", type=int, default=60, help="stream length (default 60)")
        sub.add_argument("--size", type=_size, default=(224, 168),
                         help="frame size WxH (default 224x168)")

    bag = commands.add_parser("bag", help="write a rosbag2 bag of camera and ground truth")
    bag.add_argument("out", help="bag directory to create (must not exist)")
    world_options(bag)
    bag.add_argument("--storage", choices=STORAGES, default="mcap", help="default mcap")
    bag.add_argument("--format", choices=IMAGE_FORMATS, default="raw",
                     help="raw sensor_msgs/Image rgb8, or CompressedImage png/jpeg (default raw)")
    bag.add_argument("--rate", type=float, default=30.0, help="camera Hz (default 30)")
    bag.add_argument("--image-topic", default="/camera/image_raw")
    bag.add_argument("--text-topic", default="/svlm/ground_truth")
    bag.add_argument("--question-share", type=float, default=0.0,
                     help="share of seconds with a memory question on --question-topic, as "
                          'std_msgs/String {"question", "answer"} JSON (default 0: none)')
    bag.add_argument("--question-topic", default="/svlm/question")
    truth = commands.add_parser("truth", help="print the ground-truth sentence of every second")
    world_options(truth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    width, height = args.size
    try:
        world = World(WorldConfig(seed=args.seed, width=width, height=height))
        if args.command == "truth":
            for second in range(args.seconds):
                print(f"{second:6d}  {world.sentence_at(second) or '.'}")
            return 0
        settings = BagSettings(seconds=args.seconds, camera_hz=args.rate, storage=args.storage,
                               image_format=args.format, image_topic=args.image_topic,
                               text_topic=args.text_topic, question_share=args.question_share,
                               question_topic=args.question_topic)
        with tqdm(total=args.seconds, unit="s", desc="svlm-sim bag", leave=False) as bar:
            path = write_world_bag(args.out, world, settings, progress=lambda _: bar.update(1))
    except (ValueError, FileExistsError) as error:
        print(f"svlm-sim: error: {error}", file=sys.stderr)
        return 2
    events = world.events(args.seconds)
    print(f"wrote {path}: {args.seconds} s, {int(args.seconds * args.rate)} frames "
          f"({args.format}, {args.storage}), {len(events)} event seconds "
          f"({100 * (1 - len(events) / args.seconds):.0f} % quiet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

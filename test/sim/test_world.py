"""The simulated world: deterministic, its ground truth matches its pictures, bags round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from svlm_ros.sim.bag_writer import BagSettings, write_world_bag
from svlm_ros.sim.world import COLOURS, SHAPES, World, WorldConfig, parse_event, parse_events


def test_same_seed_same_world_other_seed_other_world():
    one, two, other = World(WorldConfig(seed=3)), World(WorldConfig(seed=3)), World(
        WorldConfig(seed=4))
    # Asked in a different order, the same seed still gives the same timeline and pictures.
    assert np.array_equal(two.render(40.25), one.render(40.25))
    assert [e.sentence for e in one.events(300)] == [e.sentence for e in two.events(300)]
    for t in (0.0, 3.5, 17.2, 123.9):
        assert np.array_equal(one.render(t), two.render(t))
    assert [e.sentence for e in one.events(300)] != [e.sentence for e in other.events(300)]


def test_world_has_every_kind_of_event_and_quiet_seconds():
    world = World(WorldConfig(seed=0))
    events = world.events(1200)
    kinds = {e.kind for e in events}
    assert kinds == {"enters", "moves", "turns", "leaves", "returns", "still"}
    assert {e.colour for e in events} == set(COLOURS)
    assert {e.shape for e in events} == set(SHAPES)
    quiet = 1200 - len(events)
    assert 0.25 * 1200 < quiet < 0.6 * 1200
    backgrounds = {World(WorldConfig(seed=s)).background_style for s in range(40)}
    assert len(backgrounds) >= 3


def test_ground_truth_reads_back_and_names_what_is_seen():
    world = World(WorldConfig(seed=5))
    for event in world.events(600):
        assert parse_event(event.sentence) == event.words
        colour = np.array(COLOURS[event.colour])
        before = (world.render(event.second) == colour).all(axis=-1).sum()
        after = (world.render(event.second + 0.999) == colour).all(axis=-1).sum()
        if event.kind == "enters":
            assert after > before, event.sentence  # more of it in view at the end
        elif event.kind == "leaves":
            assert after < before, event.sentence
    assert parse_event("A Red Circle enters from the TOP.") == ("enters", "red", "circle", "up")
    assert parse_event("nothing new ...") is None
    still = parse_event("The blue square is still there")
    assert still == ("still", "blue", "square", "")
    # A previous text names many events; every one of them, in order.
    assert parse_events("the red circle leaves to the left the blue square is still a green "
                        "triangle enters from the bottom") == [
        ("leaves", "red", "circle", "left"), ("still", "blue", "square", ""),
        ("enters", "green", "triangle", "down")]
    assert parse_events("nothing new") == []
    assert parse_event("the red circle is back from the left") == ("returns", "red", "circle",
                                                                     "left")


def test_memory_events_follow_from_the_past_the_way_their_sentences_say():
    config = WorldConfig(seed=11)
    world = World(config)
    events = world.events(1500)
    returns = [e for e in events if e.kind == "returns"]
    still = [e for e in events if e.kind == "still"]
    assert len(returns) >= 20 and len(still) >= 20
    for event in returns:
        # The same colour and shape left between return_after and return_seconds before.
        ages = [event.second - e.second for e in events if e.kind == "leaves"
                and (e.colour, e.shape) == (event.colour, event.shape) and e.second < event.second]
        assert any(config.return_after <= age <= config.return_seconds for age in ages), event
        assert event.needs_memory and "is back from the" in event.sentence
    for entry in (e for e in events if e.kind == "enters"):
        ages = [entry.second - e.second for e in events if e.kind == "leaves"
                and (e.colour, e.shape) == (entry.colour, entry.shape) and e.second < entry.second]
        assert not any(config.return_after <= age <= config.return_seconds for age in ages)
    for event in still:
        assert event.sentence.endswith("is still") and event.needs_memory
        assert not world.in_pause(event.second)
        # Its last event moved it exactly still_seconds before this second's end, and nothing
        # happened to it since.
        own = [e for e in events if (e.colour, e.shape) == (event.colour, event.shape)
               and e.second < event.second]
        assert own[-1].kind in ("enters", "returns", "moves", "turns"), own[-1]
        assert event.second - own[-1].second == config.still_seconds
    off = World(WorldConfig(seed=11, return_seconds=0, still_seconds=0)).events(1500)
    assert not {e.kind for e in off} & {"returns", "still"}


def test_quiet_seconds_show_nothing_moving():
    world = World(WorldConfig(seed=2))
    quiet = [s for s in range(200) if world.event_at(s) is None]
    assert quiet
    for second in quiet[:30]:
        assert np.array_equal(world.render(second + 0.1), world.render(second + 0.9))


def test_bad_world_settings_are_refused():
    with pytest.raises(ValueError, match="32x32"):
        WorldConfig(width=10)
    with pytest.raises(ValueError, match="quiet_share"):
        WorldConfig(quiet_share=1.0)
    with pytest.raises(ValueError, match="return_after"):
        WorldConfig(return_after=50, return_seconds=40)
    with pytest.raises(ValueError, match="still_seconds"):
        WorldConfig(still_seconds=-1)
    with pytest.raises(ValueError, match="time"):
        World().render(-1.0)


@pytest.mark.parametrize("storage,image_format", [("sqlite3", "raw"), ("mcap", "png"),
                                                  ("mcap", "raw"), ("sqlite3", "jpeg")])
def test_bag_round_trip(tmp_path, storage, image_format):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    world = World(WorldConfig(seed=7, width=64, height=48))
    settings = BagSettings(seconds=12, camera_hz=4.0, storage=storage, image_format=image_format)
    path = write_world_bag(tmp_path / "world", world, settings)
    assert not list(tmp_path.glob(".*partial*")), "staging folder left behind"
    suffix = {"sqlite3": ".db3", "mcap": ".mcap"}[storage]
    assert [p.suffix for p in path.iterdir() if p.name != "metadata.yaml"] == [suffix]
    typestore = get_typestore(Stores.ROS2_KILTED)
    frames, texts = [], []
    with Reader(path) as reader:
        for connection, timestamp, data in reader.messages():
            message = typestore.deserialize_cdr(data, connection.msgtype)
            if connection.topic == settings.image_topic:
                stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
                frames.append((stamp - settings.start_stamp, message))
            else:
                texts.append((timestamp * 1e-9 - settings.start_stamp, message.data))
    assert len(frames) == 12 * 4
    assert [round(t, 6) for t, _ in frames] == [i / 4 for i in range(48)]
    import cv2

    for t, message in frames[::7]:
        if image_format == "raw":
            picture = np.frombuffer(message.data, np.uint8).reshape(48, 64, 3)
        else:
            decoded = cv2.imdecode(np.frombuffer(message.data, np.uint8), cv2.IMREAD_COLOR)
            picture = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        difference = np.abs(picture.astype(int) - world.render(t).astype(int))
        if image_format == "jpeg":  # lossy: close on average
            assert difference.mean() < 6
        else:
            assert difference.max() == 0
    expected_texts = [(s + 0.5, world.sentence_at(s)) for s in range(12) if world.sentence_at(s)]
    assert [(round(t, 6), text) for t, text in texts] == expected_texts


def test_bag_writer_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    world = World(WorldConfig(seed=1, width=64, height=48))
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        write_world_bag(tmp_path / "taken", world, BagSettings(seconds=2))

    def fail(second):
        if second == 1:
            raise KeyboardInterrupt  # as Ctrl-C midway would

    with pytest.raises(KeyboardInterrupt):
        write_world_bag(tmp_path / "cut", world, BagSettings(seconds=4, camera_hz=2.0),
                        progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_pauses_are_quiet_and_do_not_shift_the_rest_of_the_timeline():
    paused = World(WorldConfig(seed=9, pause_every=100, pause_seconds=30))
    unpaused = World(WorldConfig(seed=9, pause_seconds=0))
    for second in range(400):
        if paused.in_pause(second):
            assert paused.event_at(second) is None
    assert [paused.in_pause(s) for s in (69, 70, 99, 100)] == [False, True, True, False]
    assert not any(unpaused.in_pause(s) for s in range(400))
    # Up to the first pause, both worlds are the same world.
    assert [paused.sentence_at(s) for s in range(70)] == [unpaused.sentence_at(s)
                                                           for s in range(70)]
    with pytest.raises(ValueError, match="pause_seconds"):
        WorldConfig(pause_every=10, pause_seconds=10)


def test_a_bag_with_a_phase_starts_its_frames_into_the_first_second(tmp_path):
    # A live camera is not synchronised with the world: its first frame comes anywhere within
    # a frame interval. The frames show the world at their own time; the text stays per second.
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    world = World(WorldConfig(seed=7, width=64, height=48))
    settings = BagSettings(seconds=6, camera_hz=2.0, storage="mcap", image_format="raw",
                           phase=0.2)
    path = write_world_bag(tmp_path / "world", world, settings)
    typestore = get_typestore(Stores.ROS2_KILTED)
    stamps, texts = [], []
    with Reader(path) as reader:
        for connection, timestamp, data in reader.messages():
            message = typestore.deserialize_cdr(data, connection.msgtype)
            if connection.topic == settings.image_topic:
                t = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9 - 1.75e9
                stamps.append(round(t, 6))
                picture = np.frombuffer(message.data, np.uint8).reshape(48, 64, 3)
                assert np.array_equal(picture, world.render(t))
            else:
                texts.append(round(timestamp * 1e-9 - settings.start_stamp, 6))
    assert stamps == [0.2 + i / 2 for i in range(12)]
    assert texts == [s + 0.5 for s in range(6) if world.sentence_at(s)]
    for phase in (-0.1, 0.5):
        with pytest.raises(ValueError, match="phase"):
            BagSettings(camera_hz=2.0, phase=phase)

"""The committed tiny narrator (config/sim_narrator): loads, matches the demo, narrates."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from svlm_ros.engine import CachePolicyConfig, SamplingConfig, StreamConfig, StreamingSession
from svlm_ros.engine.model_loading import load_model
from svlm_ros.sim.scoring import score_narration, total
from svlm_ros.sim.world import World, WorldConfig

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "config" / "sim_narrator"


def recipe_settings() -> dict:
    return json.loads((MODEL / "svlm_recipe.json").read_text())["narrator_settings"]


def test_demo_config_runs_the_narrator_as_it_was_trained():
    demo = yaml.safe_load((REPO / "config" / "sim_demo.yaml").read_text())
    parameters = demo["/**"]["ros__parameters"]
    for name, value in recipe_settings().items():
        assert parameters[name] == value, f"config/sim_demo.yaml {name} differs from training"
    assert not any("/" in str(value) and str(value).startswith("/") for value in
                   json.loads((MODEL / "svlm_recipe.json").read_text()).values()), (
        "the recipe must not name paths of the machine that made it")


def test_the_committed_narrator_narrates_an_unseen_world():
    settings = recipe_settings()
    loaded = load_model(MODEL, device="cpu", dtype="float32")
    config = StreamConfig(
        fps=settings["fps"], period=settings["period"], max_pixels=settings["max_pixels"],
        min_pixels=settings["min_pixels"], max_new_tokens=settings["max_new_tokens"],
        cache=CachePolicyConfig(text_sink_tokens=settings["text_sink_tokens"],
                                text_window_tokens=settings["text_window_tokens"],
                                vision_window_seconds=settings["vision_window_seconds"]),
        sampling=SamplingConfig(temperature=0.0, repetition_penalty=1.0),
    )
    session = StreamingSession(loaded, config)
    world = World(WorldConfig(seed=424242))  # the demo's world, never seen in training
    narration = []
    for frame in range(40 * 30):
        t = frame / 30
        session.add_frame(world.render(t), 1_000.0 + t)
        result, _ = session.run_pending()
        if result is not None:
            narration.append((int(round(result.start)), result.text))
    assert len(narration) >= 39
    score = total(score_narration(world, narration))
    # What this narrator measurably learned (README): to stay silent when nothing happens,
    # and to speak up in some event seconds.
    assert score.quiet_right >= 0.8 * score.quiet_seconds, score
    assert score.events_spoken >= 1, score

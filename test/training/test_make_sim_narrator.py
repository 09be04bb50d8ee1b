"""``svlm-make-sim-narrator`` end to end at toy size: bags, dataset, training, recipe, stages."""

from __future__ import annotations

import json

from svlm_training import sim_narrator
from svlm_training.train_config import TrainConfig

from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_settings import ENGINE_FORMAT, read_settings
from svlm_ros.sim.world import FIRST_HELD_OUT_SEED

TOY = ["--bags", "2", "--bag-seconds", "10", "--steps", "2"]


def test_the_basic_world_has_no_memory_events_and_names_its_bags(tmp_path):
    from svlm_ros.sim.world import World, WorldConfig

    basic = World(WorldConfig(seed=3, **sim_narrator.WORLDS["basic"])).events(600)
    assert basic and not {e.kind for e in basic} & {"returns", "still"}
    work = tmp_path / "work"
    assert sim_narrator.main([str(tmp_path / "out"), *TOY, "--world", "basic",
                              "--question-share", "0", "--work", str(work)]) == 0
    assert sorted(p.name for p in (work / "bags").iterdir()) == ["world_001_basic",
                                                                 "world_002_basic"]
    recipe = json.loads((tmp_path / "out" / "svlm_recipe.json").read_text())
    assert recipe["world"] == "basic" and recipe["question_share"] == 0


def test_a_toy_narrator_is_made_and_a_second_stage_continues_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert sim_narrator.main([str(first), *TOY]) == 0
    recipe = json.loads((first / "svlm_recipe.json").read_text())
    assert recipe["command"].startswith("svlm-make-sim-narrator OUT --bags 2 --bag-seconds 10")
    assert recipe["earlier_stages"] == []
    assert recipe["narrator_settings"] == sim_narrator.NARRATOR_SETTINGS
    # The node reads the same settings from the folder, with the prompts and format it was
    # trained with.
    settings = read_settings(first)
    assert settings == sim_narrator.narrator_settings()
    assert settings.format == ENGINE_FORMAT
    assert {k: v for k, v in settings.parameters().items()
            if k in sim_narrator.NARRATOR_SETTINGS} == sim_narrator.NARRATOR_SETTINGS
    assert settings.system_prompt == TrainConfig(data="", model="", out="").system_prompt
    load_model(str(first), device="cpu")  # a loadable checkpoint

    second = tmp_path / "second"
    work = tmp_path / "work"
    assert sim_narrator.main([str(second), *TOY, "--seed", "1", "--init-from", str(first),
                              "--first-world", "3", "--phase-jitter", "0.2",
                              "--work", str(work)]) == 0
    staged = json.loads((second / "svlm_recipe.json").read_text())
    assert staged["command"].endswith(
        "--seed 1 --first-world 3 --phase-jitter 0.2 --world memory --question-share 0.05 "
        "--chunk-seconds 8 --overlap-seconds 4 --init-from EARLIER")
    assert staged["question_share"] == 0.05
    assert staged["world_seeds"] == [3, 4] and staged["phase_jitter"] == 0.2
    # New worlds, each starting at its own phase below the jitter.
    phases = [sim_narrator.world_phase(seed, 0.2) for seed in (3, 4)]
    assert all(0 < phase < 0.2 for phase in phases) and phases[0] != phases[1]
    assert sorted(p.name for p in (work / "bags").iterdir()) == [
        f"world_{seed:03d}_phase{phase:.4f}_questions0.05"
        for seed, phase in zip((3, 4), phases, strict=True)]
    assert [stage["command"] for stage in staged["earlier_stages"]] == [recipe["command"]]
    assert "initial model: " in capsys.readouterr().out


def test_a_phase_jitter_of_half_a_second_or_more_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert sim_narrator.main([str(out), *TOY, "--phase-jitter", "0.5"]) == 1
    assert "--phase-jitter must be in [0, 0.5)" in capsys.readouterr().err
    assert not out.exists()


def test_training_on_the_held_out_worlds_is_refused(tmp_path, capsys):
    # The evaluation stream was once seed 777, inside the worlds stage 6 trained on.
    out = tmp_path / "out"
    first = FIRST_HELD_OUT_SEED - 1
    assert sim_narrator.main([str(out), *TOY, "--first-world", str(first), "--bags", "2"]) == 1
    assert "reach the held-out seeds" in capsys.readouterr().err
    assert not out.exists()


def test_init_from_a_folder_that_is_no_sim_narrator_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert sim_narrator.main([str(out), *TOY, "--init-from", str(tmp_path)]) == 1
    assert "is not a sim narrator" in capsys.readouterr().err
    assert not out.exists()


def test_the_recipe_script_refuses_a_missing_or_existing_out(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_sim_narrator.sh"
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    exists = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True)
    assert exists.returncode == 1 and "exists" in exists.stderr


def _flags(words: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of one svlm-make-sim-narrator command line (OUT and
    --init-from left out: they name this machine's folders)."""
    pairs = dict(zip(words[::2], words[1::2], strict=False))
    return {flag: value for flag, value in pairs.items()
            if flag.startswith("--") and flag != "--init-from"}


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)  # 1e-4 and 0.0001
    except ValueError:
        return a == b


def test_the_recipe_script_runs_the_stages_the_committed_narrator_was_made_with():
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recipe = json.loads((root / "config" / "sim_narrator" / "svlm_recipe.json").read_text())
    recorded = [stage["command"] for stage in recipe["earlier_stages"]] + [recipe["command"]]
    script = (root / "scripts" / "make_sim_narrator.sh").read_text().replace("\\\n", " ")
    # Each stage is one `stage OUT --flag value ...` call (after `||` for the earlier ones).
    calls = [line.split("stage ", 1)[1] for line in script.splitlines()
             if line.split("#")[0].strip().startswith(("[ -d", "stage \""))]
    assert len(calls) == len(recorded) == 8
    defaults = {action.option_strings[0]: str(action.default)
                for action in sim_narrator.build_parser()._actions if action.option_strings}
    for number, (call, command) in enumerate(zip(calls, recorded, strict=True), start=1):
        ran, made = _flags(shlex.split(call)[1:]), _flags(command.split()[2:])
        for flag, value in made.items():
            # A flag the script leaves out must be at its default; one it gives, the same.
            assert _same(ran.get(flag, defaults[flag]), value), (number, flag, value)
        # Flags the recorded command lacks came after that stage was made (e.g. --world).
        assert set(ran) - set(made) <= {"--world", "--question-share", "--chunk-seconds",
                                        "--overlap-seconds", "--phase-jitter"}, number

"""training/README.md documents every flag of every training command."""

from __future__ import annotations

from pathlib import Path

import pytest
from svlm_training import (
    bag2dataset,
    evaluation,
    export,
    sim_ablations,
    sim_narrator,
    train_config,
)

README = Path(__file__).resolve().parents[2] / "training" / "README.md"


@pytest.mark.parametrize(
    "parser",
    [bag2dataset.build_parser, train_config.build_parser, evaluation.build_parser,
     export.build_parser, sim_narrator.build_parser, sim_ablations.build_parser],
    ids=["svlm-bag2dataset", "svlm-train", "svlm-eval", "svlm-export",
         "svlm-make-sim-narrator", "svlm-sim-ablations"],
)
def test_every_flag_is_in_the_training_readme(parser):
    text = README.read_text(encoding="utf-8")
    flags = [option for action in parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    assert flags
    missing = [flag for flag in flags if f"`{flag}" not in text and f"{flag}`" not in text
               and f", {flag}" not in text]
    assert not missing, f"undocumented in training/README.md: {missing}"

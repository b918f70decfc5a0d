"""One settings object (issue 7): flat worker settings and nested sections, read from COLDSTART_* variables,
validated where they are read with the variable's name, and handed to a child process whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coldstart.errors import ConfigError
from coldstart.settings import Settings, TrainerSettings


def test_the_trainer_section_reads_its_own_variables_and_flags_win():
    s = Settings.from_env({"COLDSTART_TRAINER_STEPS": "12", "COLDSTART_TRAINER_SAMPLING": "uniform",
                           "COLDSTART_PARTITIONS": "2"}, trainer={"steps": 30, "lr": None})
    assert (s.trainer.steps, s.trainer.sampling, s.trainer.lr, s.partitions) == (30, "uniform", 2e-5, 2)


@pytest.mark.parametrize("variable, value, message", [
    ("COLDSTART_TRAINER_SAMPLING", "loss", "COLDSTART_TRAINER_SAMPLING='loss' is not one of"),
    ("COLDSTART_TRAINER_STEPS", "many", "COLDSTART_TRAINER_STEPS='many' is not a valid int"),
    ("COLDSTART_TRAINER_BATCH_SIZE", "0", "COLDSTART_TRAINER_BATCH_SIZE must be at least 1"),
    ("COLDSTART_DEVICE", "gpu", "COLDSTART_DEVICE='gpu' is not a device"),
    ("COLDSTART_EVAL_DEVICE", "gpu", "COLDSTART_EVAL_DEVICE='gpu' is not a device"),
    ("COLDSTART_ENCODER_PRECISION", "int8", "COLDSTART_ENCODER_PRECISION='int8' is not one of float32, bfloat16"),
    ("COLDSTART_TRAINER_PRECISION", "fp16", "COLDSTART_TRAINER_PRECISION='fp16' is not one of auto, float32, bfloat16"),
    ("COLDSTART_GAUGES_EVERY_S", "0", "COLDSTART_GAUGES_EVERY_S must be > 0"),
    ("COLDSTART_TRAINER_GATE_Z", "-1", "COLDSTART_TRAINER_GATE_Z must be between 0 and 5"),
])
def test_a_bad_value_is_a_config_error_naming_its_variable(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


def test_an_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="unknown settings"):
        Settings.from_env({}, trainer={"stepz": 3})


def test_a_child_process_reads_back_exactly_the_parents_settings(tmp_path):
    parent = Settings(partitions=3, data_dir=Path(tmp_path), anomaly_guard=False, half_life_s=120.0,
                      api_token="t0ken", trainer=TrainerSettings(steps=9, sampling="weighted_loss"))
    code = ("from coldstart.settings import Settings; s = Settings.from_env(); "
            "print(s.partitions, s.data_dir, s.anomaly_guard, s.half_life_s, s.api_token, s.trainer.steps, "
            "s.trainer.sampling)")
    out = subprocess.run([sys.executable, "-c", code], env=parent.to_env(), capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["3", str(tmp_path), "False", "120.0", "t0ken", "9", "weighted_loss"]


def test_a_mistyped_sampling_flag_stops_the_trainer_at_start_naming_the_variable():
    # Before issue 7 a typo here passed the CLI and made every background round fail quietly.
    done = subprocess.run([sys.executable, "-m", "coldstart.cli", "trainer", "--sampling", "imporance",
                           "--bootstrap-servers", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "COLDSTART_TRAINER_SAMPLING='imporance' is not one of importance" in " ".join((done.stdout + done.stderr).split())

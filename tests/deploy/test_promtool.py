"""The Prometheus files as Prometheus's own tool reads them: the configuration and rules load, and every
alert fires on the situation it names and stays quiet on a healthy one (deploy/prometheus/alerts_test.yml).

``promtool`` comes with Debian's ``prometheus`` package, which ``.ci/run`` installs: a missing binary
fails these tests instead of skipping them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on the PATH: apt-get install -y prometheus (.ci/run does it)")
    return subprocess.run([binary, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_config_and_rules_load():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout + done.stderr


def test_every_alert_fires_when_it_should_and_only_then():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    defined = set(re.findall(r"- alert: (\w+)", (PROM / "alerts.yml").read_text()))
    assert defined == tested, f"alerts without a promtool test: {sorted(defined - tested)}"

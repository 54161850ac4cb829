"""Prometheus configuration and rules checked by Prometheus' own promtool: syntax, and rule unit tests
(monitoring/tests/alerts_test.yml) that make the error-ratio and drift alerts fire on synthetic series.

promtool comes from the `prometheus` Debian package. Without it these tests skip, unless
CATSDOGS_REQUIRE_TOOLS=1 (CI), where a missing tool is a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from monitoring import dashboard
from tests import prometheus_config as prometheus

MONITORING = prometheus.MONITORING


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CATSDOGS_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required (CATSDOGS_REQUIRE_TOOLS=1) but not on PATH: apt-get install -y prometheus")
    pytest.skip(f"{name} not installed (apt-get install -y prometheus); set CATSDOGS_REQUIRE_TOOLS=1 to require it")


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def run(cmd: list[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False, timeout=120)


def test_promtool_accepts_the_prometheus_config(promtool):
    result = run([promtool, "check", "config", str(MONITORING / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules(promtool):
    result = run([promtool, "check", "rules", str(MONITORING / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass_and_cover_error_ratio_and_drift_alerts(promtool):
    tests = yaml.safe_load((MONITORING / "tests" / "alerts_test.yml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    assert {"CatsdogsHigh5xxRatio", "CatsdogsHigh4xxRatio", "CatsdogsPredictionShareDrift",
            "CatsdogsConfidenceDrop", "CatsdogsMemoryNearLimit"} <= tested
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=MONITORING / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_would_catch_a_broken_alert(promtool, tmp_path):
    """The unit tests are not vacuous: with the 4xx threshold raised out of reach they fail."""
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "CatsdogsHigh4xxRatio":
                rule["expr"] = rule["expr"].replace("> 0.25", "> 2")
    prometheus.write_yaml(rules, tmp_path / "alerts.yml")
    shutil.copy(MONITORING / "tests" / "alerts_test.yml", tmp_path / "alerts_test.yml")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0 and "CatsdogsHigh4xxRatio" in result.stdout + result.stderr


def test_every_dashboard_expression_parses_with_promtool(promtool):
    board = dashboard.load_dashboard()
    result = dashboard.promtool_check_rules(dashboard.dashboard_rules(board), promtool)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(foo[5m])"}]}]}
    assert dashboard.promtool_check_rules(broken, promtool).returncode != 0


def test_check_dashboard_cli(promtool, capsys):
    from monitoring.__main__ import main

    assert main(["check-dashboard", "--promtool", promtool]) == 0
    assert "parse" in capsys.readouterr().out


def test_rendered_test_config_is_valid(promtool, tmp_path):
    config = prometheus.render_config(yaml.safe_load((MONITORING / "prometheus.yml").read_text()),
                                      target="127.0.0.1:9999", interval="1s", rule_files=["alerts.yml"])
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9999"]
    rules = prometheus.shorten_for(yaml.safe_load((MONITORING / "alerts.yml").read_text()), "1s")
    assert all(r["for"] == "1s" for g in rules["groups"] for r in g["rules"] if "alert" in r)
    prometheus.write_yaml(rules, tmp_path / "alerts.yml")
    prometheus.write_yaml(config, tmp_path / "prometheus.yml")
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr

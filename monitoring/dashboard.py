"""The Grafana dashboard's PromQL, checked by Prometheus' own parser (`python -m monitoring check-dashboard`).

promtool has no "check this expression" command, so every panel target becomes a recording rule and
`promtool check rules` parses them. That each expression selects metrics TorchServe exports is checked by the
tests: against a /metrics snapshot, and on a real Prometheus scraping a real TorchServe.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parent
DASHBOARD = MONITORING / "grafana" / "dashboards" / "catsdogs.json"
# Grafana's built-in variables, replaced by values Prometheus accepts before parsing.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}


def substitute_variables(expr: str) -> str:
    """Grafana `$var` -> GRAFANA_VARIABLES' value, `.*` for the dashboard's template variables (`$model`)."""
    return re.sub(r"\$(\w+)", lambda match: GRAFANA_VARIABLES.get(match.group(1), ".*"), expr)


def dashboard_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every Prometheus target (rows' nested panels and annotations included)."""
    found = [(f"annotation {a.get('name', '?')}", a["expr"])
             for a in (dashboard.get("annotations") or {}).get("list") or [] if a.get("expr")]

    def visit(panels: list) -> None:
        for panel in panels or []:
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    found.append((f"{panel.get('title', '?')} / {target.get('refId', '?')}", target["expr"]))
            visit(panel.get("panels") or [])

    visit(dashboard.get("panels") or [])
    return found


def dashboard_rules(dashboard: dict) -> dict:
    """A Prometheus rules document with one recording rule per panel target (for `promtool check rules`)."""
    rules = [{"record": f"dashboard:target_{i}", "expr": substitute_variables(expr),
              "labels": {"panel": title[:100]}}
             for i, (title, expr) in enumerate(dashboard_targets(dashboard))]
    return {"groups": [{"name": "dashboard-expressions", "rules": rules}]}


def promtool_check_rules(rules_doc: dict, promtool: str | None = None) -> subprocess.CompletedProcess:
    """Run `promtool check rules` on the document (written to a temporary file)."""
    binary = promtool or shutil.which("promtool")
    if not binary:
        raise FileNotFoundError("promtool not found; install Prometheus (Debian: apt-get install -y prometheus)")
    with tempfile.TemporaryDirectory(prefix="dashboard-rules-") as tmp:
        path = Path(tmp) / "dashboard.rules.yml"
        path.write_text(yaml.safe_dump(rules_doc, sort_keys=False))
        return subprocess.run([binary, "check", "rules", str(path)], capture_output=True, text=True, check=False)


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(Path(path).read_text())


def check_dashboard(dashboard_path: Path = DASHBOARD, promtool: str | None = None) -> list[str]:
    """Problems found in the dashboard (empty list: it has targets and promtool parses every one)."""
    dashboard = load_dashboard(dashboard_path)
    if not dashboard_targets(dashboard):
        return [f"{dashboard_path}: no Prometheus targets found"]
    result = promtool_check_rules(dashboard_rules(dashboard), promtool)
    if result.returncode != 0:
        return [f"promtool rejects a dashboard expression:\n{result.stdout}{result.stderr}"]
    return []

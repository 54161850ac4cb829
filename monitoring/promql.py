"""Checks for the Grafana dashboard's PromQL: syntax (through promtool) and the metric names it uses.

promtool has no "check this expression" command, so `dashboard_rules` turns every panel target into a
recording rule and `promtool check rules` parses them with Prometheus' own parser. `metric_names`
lists the metric names an expression selects, to compare with what TorchServe really exports
(`exposition_names` of a /metrics scrape) plus the recording rules of alerts.yml.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from monitoring.rules import RECORDS  # the generated baseline rules (make drift-rules)

MONITORING = Path(__file__).resolve().parent
DASHBOARD = MONITORING / "grafana" / "dashboards" / "catsdogs.json"
ALERTS = MONITORING / "alerts.yml"
METRICS_SNAPSHOT = MONITORING / "tests" / "torchserve_metrics.txt"
# Series Prometheus itself creates for every target / alerting rule.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# Grafana's built-in variables, replaced by values Prometheus accepts before parsing.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def substitute_variables(expr: str, variables: dict[str, str] | None = None) -> str:
    """Grafana `$var` / `${var}` / `[[var]]` -> values (`.*` for dashboard template variables)."""
    values = {**GRAFANA_VARIABLES, **(variables or {})}

    def value(match: re.Match) -> str:
        return values.get(match.group(1) or match.group(2) or match.group(3), ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords, labels and strings left out)."""
    text = _STRING.sub('""', substitute_variables(expr))
    text = re.sub(r"\{[^}]*\}", " ", text)            # label matchers
    text = _GROUPING.sub(" ", text)                    # by (...), on (...), group_left (...)
    text = re.sub(r"\[[^\]]*\]", " ", text)            # range and subquery selectors
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"@\s*[0-9.]+|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", text)  # @ modifiers, numbers
    return {m.group(0) for m in re.finditer(_NAME, text)  # a name followed by "(" is a function
            if not text[m.end():].lstrip().startswith("(") and m.group(0).lower() not in _KEYWORDS}


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


def template_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(variable name, query) of query-type template variables (label_values(...) is Grafana syntax: skipped)."""
    out = []
    for var in (dashboard.get("templating") or {}).get("list") or []:
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and query and not str(query).startswith(("label_values", "label_names",
                                                                                "metrics(", "query_result")):
            out.append((var["name"], query))
    return out


def dashboard_rules(dashboard: dict) -> dict:
    """A Prometheus rules document with one recording rule per panel target (for `promtool check rules`)."""
    rules = [{"record": f"dashboard:target_{i}", "expr": substitute_variables(expr),
              "labels": {"panel": title[:100]}}
             for i, (title, expr) in enumerate(dashboard_targets(dashboard))]
    return {"groups": [{"name": "dashboard-expressions", "rules": rules}]}


def exposition_names(text: str) -> set[str]:
    """Sample names in Prometheus text exposition format (histograms give _bucket, _sum, _count)."""
    return {m.group(0) for line in text.splitlines() if not line.startswith("#") and (m := re.match(_NAME, line))}


def recording_rules(rules_doc: dict) -> set[str]:
    return {r["record"] for g in rules_doc.get("groups") or [] for r in g.get("rules") or [] if "record" in r}


def unknown_metrics(dashboard: dict, known: set[str]) -> dict[str, set[str]]:
    """target -> metric names it uses that are not in `known` (empty dict: all names exist)."""
    return {title: names for title, expr in dashboard_targets(dashboard) + template_queries(dashboard)
            if (names := metric_names(expr) - known - PROMETHEUS_SERIES)}


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


def check_dashboard(dashboard_path: Path = DASHBOARD, metrics_path: Path = METRICS_SNAPSHOT,
                    alerts_path: Path = ALERTS, promtool: str | None = None) -> list[str]:
    """Problems found in the dashboard (empty list: it parses and uses only known metrics)."""
    dashboard = load_dashboard(dashboard_path)
    problems = []
    if not dashboard_targets(dashboard):
        problems.append(f"{dashboard_path}: no Prometheus targets found")
    known = exposition_names(Path(metrics_path).read_text()) | recording_rules(
        yaml.safe_load(Path(alerts_path).read_text())) | set(RECORDS)
    for title, names in sorted(unknown_metrics(dashboard, known).items()):
        problems.append(f"panel {title}: unknown metric(s) {sorted(names)} (not in {metrics_path.name} "
                        f"or the recording rules of {alerts_path.name} and monitoring/rules.py)")
    result = promtool_check_rules(dashboard_rules(dashboard), promtool)
    if result.returncode != 0:
        problems.append(f"promtool rejects a dashboard expression:\n{result.stdout}{result.stderr}")
    return problems

"""Test helper: the metric names a PromQL expression selects, to compare the dashboard with what TorchServe
really exports (`exposition_names` of a /metrics scrape) plus the recording rules. Syntax is promtool's job
(monitoring/dashboard.py); this only lists names.
"""
from __future__ import annotations

import re

from monitoring.dashboard import MONITORING, dashboard_targets, substitute_variables

ALERTS = MONITORING / "alerts.yml"
METRICS_SNAPSHOT = MONITORING / "tests" / "torchserve_metrics.txt"
# Series Prometheus itself creates for every target / alerting rule.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added"}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2", "start", "end"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


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


def exposition_names(text: str) -> set[str]:
    """Sample names in Prometheus text exposition format (histograms give _bucket, _sum, _count)."""
    return {m.group(0) for line in text.splitlines() if not line.startswith("#") and (m := re.match(_NAME, line))}


def recording_rules(rules_doc: dict) -> set[str]:
    return {r["record"] for g in rules_doc.get("groups") or [] for r in g.get("rules") or [] if "record" in r}


def unknown_metrics(dashboard: dict, known: set[str]) -> dict[str, set[str]]:
    """target -> metric names it uses that are not in `known` (empty dict: all names exist)."""
    return {title: names for title, expr in dashboard_targets(dashboard) + template_queries(dashboard)
            if (names := metric_names(expr) - known - PROMETHEUS_SERIES)}

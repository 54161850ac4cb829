"""The quality gate: the thresholds of a mode's Locust config (loadtest/<mode>.conf) against what a run measured.

Every threshold is a locustfile option (RULES below), set in the config file or on the command line; one that
is not set is reported, not checked. The locustfile calls these when Locust quits and sets its exit code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# threshold option -> (metric key, "max" | "min" | "true", unit for messages)
RULES = {
    "max_error_ratio": ("error_ratio", "max", ""),
    "max_p95_ms": ("p95_ms", "max", " ms"),
    "max_p99_ms": ("p99_ms", "max", " ms"),
    "min_rps": ("rps", "min", " req/s"),
    "min_accuracy": ("accuracy", "min", ""),
    "max_accuracy_drop": ("accuracy_drop", "max", ""),   # served model's offline test accuracy - live accuracy
    "max_rss_growth_pct": ("rss_growth_pct", "max", " %"),
    "max_worker_restarts": ("worker_restarts", "max", ""),
    "require_recovery": ("recovered", "true", ""),
    "max_recovery_s": ("recovery_s", "max", " s"),
    "max_failures_after_recovery": ("failures_after_recovery", "max", ""),
    "max_failures_before_fault": ("failures_before_fault", "max", ""),
}


@dataclass(frozen=True)
class Check:
    name: str          # the threshold key, e.g. "max_p95_ms"
    value: object      # what was measured (None: not measured)
    limit: object
    ok: bool
    text: str


def add_threshold_options(parser) -> None:
    """One locustfile option per RULES key (None: not checked)."""
    for key, (metric, kind, unit) in RULES.items():
        flag = "--" + key.replace("_", "-")
        if kind == "true":
            parser.add_argument(flag, action="store_true", include_in_web_ui=False, help=f"gate: {metric} must be true")
        else:
            parser.add_argument(flag, type=float, default=None, include_in_web_ui=False,
                                help=f"gate: {metric}{unit} must be {'at most' if kind == 'max' else 'at least'} this")


def limits_from(options) -> dict:
    """The thresholds set in the config file / command line (parsed Locust options)."""
    values = {key: getattr(options, key, None) for key in RULES}
    return {key: value for key, value in values.items() if value is not None and value is not False}  # 0.0 counts


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def evaluate(metrics: dict, limits: dict) -> list[Check]:
    """One Check per threshold that is set (None = reported, not checked), plus "requests > 0" always.

    A metric that was not measured (missing or None) fails its threshold: a gate must not pass by default.
    """
    requests = metrics.get("requests") or 0
    checks = [Check("requests", requests, "> 0", requests > 0,
                    f"{requests} requests sent" if requests else "no request was made: nothing was measured")]
    for key, limit in limits.items():
        if limit is None:
            continue
        metric, kind, unit = RULES[key]
        value = metrics.get(metric)
        if kind == "true":
            if not limit:
                continue
            ok = value is True
            text = f"{metric}: {value} (must be true)"
        elif not _number(value):
            ok, text = False, f"{metric} was not measured (limit {limit}{unit})"
        elif kind == "max":
            ok = value <= limit
            text = f"{metric} {value:g}{unit} {'<=' if ok else '>'} {limit:g}{unit}"
        else:
            ok = value >= limit
            text = f"{metric} {value:g}{unit} {'>=' if ok else '<'} {limit:g}{unit}"
        checks.append(Check(key, value, limit, ok, text))
    return checks


def passed(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)


def entry_metrics(entry) -> dict:
    """Throughput and latency of a Locust StatsEntry (stats.total or one endpoint); times in ms."""
    requests = entry.num_requests
    failures = entry.num_failures
    pct = (lambda q: round(float(entry.get_response_time_percentile(q)), 1)) if requests else (lambda q: None)
    return {"name": entry.name, "method": entry.method or "", "requests": requests, "failures": failures,
            "error_ratio": round(failures / requests, 6) if requests else None,
            "rps": round(float(entry.total_rps), 2), "avg_ms": round(float(entry.avg_response_time), 1),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "max_ms": round(float(entry.max_response_time), 1) if requests else None}

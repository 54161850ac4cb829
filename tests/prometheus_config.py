"""Test helper: the committed monitoring/prometheus.yml and alerts.yml with a few
values replaced (scrape target, intervals, `for:` durations), for a local Prometheus next to
`make serve` or the integration tests. The committed files stay the reviewed source."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"


def render_config(config: dict, *, target: str | None = None, interval: str | None = None,
                  rule_files: list[str] | None = None, job: str = "torchserve") -> dict:
    """A copy of the Prometheus config with `job`'s targets replaced by [target], scrape and rule
    evaluation intervals set to `interval` and rule_files replaced (all optional)."""
    out = copy.deepcopy(config)
    if interval:
        out.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval)
        for scrape in out.get("scrape_configs") or []:
            scrape.pop("scrape_interval", None)
            scrape.pop("scrape_timeout", None)
    if target:
        jobs = [s for s in out.get("scrape_configs") or [] if s.get("job_name") == job]
        if not jobs:
            raise ValueError(f"no scrape job {job!r} in the Prometheus config")
        for scrape in jobs:
            labels = {k: v for sc in scrape.get("static_configs") or [] for k, v in (sc.get("labels") or {}).items()}
            scrape["static_configs"] = [{"targets": [target], **({"labels": labels} if labels else {})}]
    if rule_files is not None:
        out["rule_files"] = list(rule_files)
    return out


def shorten_for(rules: dict, duration: str = "0s") -> dict:
    """A copy of a rules document with every alert's `for:` set to `duration` (tests fire at once)."""
    out = copy.deepcopy(rules)
    for group in out.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                rule["for"] = duration
    return out


def write_yaml(doc: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path

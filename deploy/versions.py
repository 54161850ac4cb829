"""Pure decisions about registered versions, from the deploy history the tool keeps in the model store.

TorchServe does not know in what order versions were deployed, so every default change is appended to
`.deploy-history.json` ({"from", "to", "action", "at"}). Rollback goes back to the version that was default
before the current one; pruning keeps the most recent defaults. Versions it does not mention count as oldest.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

HISTORY_FILE = ".deploy-history.json"
HISTORY_LIMIT = 200


def recency(history: list[dict]) -> dict[str, int]:
    """version -> rank; higher = was default (or the previous default) more recently."""
    rank: dict[str, int] = {}
    for i, entry in enumerate(history):
        if entry.get("from"):
            rank[entry["from"]] = 2 * i
        if entry.get("to"):
            rank[entry["to"]] = 2 * i + 1
    return rank


def versions_to_prune(registered: list[str], default: str | None, history: list[dict], keep: int) -> list[str]:
    """Registered versions beyond the `keep` most recent (the default always counts as one), oldest first."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the default version always stays), got {keep}")
    rank = recency(history)
    others = [v for v in registered if v != default]
    # newest first: by history rank, unknown versions last; ties broken by name for a stable answer
    newest_first = sorted(others, key=lambda v: (rank.get(v, -1), v), reverse=True)
    slots = keep - (1 if default in registered else 0)
    return list(reversed(newest_first[max(slots, 0):]))


def rollback_target(history: list[dict], default: str | None, registered: list[str]) -> str | None:
    """The version that was default before `default` and is still registered; else the only other one."""
    for entry in reversed(history):
        previous = entry.get("from")
        if entry.get("to") == default and previous and previous != default and previous in registered:
            return previous
    others = [v for v in registered if v != default]
    return others[0] if len(others) == 1 else None


def history_path(store: Path | None) -> Path | None:
    return Path(store) / HISTORY_FILE if store else None


def read_json(path: Path | None):
    """The parsed JSON file; None when there is no path, no file or no valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, TypeError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    """Write `data` as JSON atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def read_history(path: Path | None) -> list[dict]:
    data = read_json(path)
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def append_history(path: Path | None, *, action: str, previous: str | None, version: str) -> None:
    """Record a default change (no-op without a store), keeping the last HISTORY_LIMIT."""
    if path is not None:
        entry = {"action": action, "from": previous, "to": version,
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(path, [*read_history(path), entry][-HISTORY_LIMIT:])

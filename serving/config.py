"""config.properties handling: read it, and derive the copy a TorchServe run actually uses.

The repo's `config.properties` is the reviewed, secure-by-default configuration. `python -m serving
start` never edits it: it writes `<run-dir>/config.properties`, the same text with paths made
absolute and only the values the user overrode (ports, model store, models) replaced.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from catsdogs.contract import DEFAULT_URLS, LOOPBACK, PORTS, REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "config.properties"
ADDRESS_KEYS = {api: f"{api}_address" for api in PORTS}
PATH_KEYS = ("model_store", "metrics_config", "workflow_store")
_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*[=:]\s*(.*?)\s*$")


def parse_properties(text: str) -> dict[str, str]:
    """Java-properties subset TorchServe uses: `key=value` lines (`#`/`!` comments never match _LINE)."""
    return {m.group(1): m.group(2) for m in map(_LINE.match, text.splitlines()) if m}


def read_properties(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchServe config {path} not found; run from the repo root or pass --config")
    return parse_properties(path.read_text())


def render_properties(text: str, overrides: dict[str, str]) -> str:
    """`text` with the value of every key in `overrides` replaced in place (comments kept); new keys appended."""
    pending = dict(overrides)
    out = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) in pending:
            out.append(f"{match.group(1)}={pending.pop(match.group(1))}")
        else:
            out.append(line)
    if pending:
        out.append("# set by python -m serving start")
        out += [f"{key}={value}" for key, value in pending.items()]
    return "\n".join(out) + "\n"


def address(props: dict[str, str], api: str, host: str | None = None, port: int | None = None) -> str:
    """The `api`'s *_address of `props` (TorchServe's default when absent) with `host` and/or `port` replaced."""
    parts = urlsplit(props.get(ADDRESS_KEYS[api], DEFAULT_URLS[api]))
    host = host or parts.hostname or LOOPBACK
    return f"{parts.scheme or 'http'}://{f'[{host}]' if ':' in host else host}:{port or parts.port or PORTS[api]}"


def base_urls(props: dict[str, str]) -> dict[str, str]:
    """API name -> base URL from the *_address keys; a wildcard bind address is reached on the loopback."""
    return {api: address(props, api, LOOPBACK if urlsplit(props.get(key, "")).hostname in ("0.0.0.0", "::")
                         else None) for api, key in ADDRESS_KEYS.items()}


def derive_config(base: Path, out: Path, *, ports: dict[str, int | None] | None = None,
                  grpc_ports: tuple[int | None, int | None] | None = None, model_store: Path | None = None,
                  models: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Write the run's config.properties to `out`; returns its parsed properties.

    Relative paths in `base` are resolved against the directory of `base`, because TorchServe
    resolves them against its working directory, which for a run is the run directory.
    """
    base = Path(base).resolve()
    text = base.read_text()
    props = parse_properties(text)
    overrides = {key: str((base.parent / props[key]).resolve()) for key in PATH_KEYS if props.get(key)}
    if model_store is not None:
        overrides["model_store"] = str(Path(model_store).resolve())
    overrides.update({ADDRESS_KEYS[api]: address(props, api, port=port) for api, port in (ports or {}).items() if port})
    for key, port in zip(("grpc_inference_port", "grpc_management_port"), grpc_ports or ()):
        if port:
            overrides[key] = str(port)
    if models:
        overrides["load_models"] = models
    overrides.update(extra or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    rendered = render_properties(text, overrides)
    out.write_text(rendered)
    return parse_properties(rendered)

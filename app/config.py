"""One configuration object, read from app.yaml, then the environment, then the command line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from operators.errors import ConfigurationError
from operators.precision import PRECISIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP_YAML = REPO_ROOT / "app.yaml"

# Environment variables that the MONAI Deploy runtime (MAP) sets, and the setting each fills.
HOLOSCAN_ENV = {
    "HOLOSCAN_INPUT_PATH": "input",
    "HOLOSCAN_OUTPUT_PATH": "output",
    "HOLOSCAN_MODEL_PATH": "models",
    "HOLOSCAN_WORKDIR": "workdir",
}
ENV_PREFIX = "SEGMAMBA_"
PATH_FIELDS = ("input", "output", "models", "workdir", "series_rules", "spool", "inbox", "tls_cert", "tls_key",
               "tls_ca")
OPTIONAL_FIELDS = ("series_rules", "sw_batch_size", "mirror_tta", "inbox", "tls_cert", "tls_key", "tls_ca",
                   "http_token", "http_user", "http_password")
BOOL_FIELDS = ("mirror_tta", "progress", "tls_require_client_cert", "http_auth", "show_phi")
# Node settings: (minimum) per number; ints and floats both must be >= their minimum.
INT_FIELDS = {"sw_batch_size": 1, "port": 1, "http_port": 0, "job_retries": 0, "max_associations": 1,
              "max_study_instances": 1, "max_study_mb": 1,
              # node intake and security
              "max_associations_per_peer": 1, "min_free_mb": 0, "quarantine_mb": 0}
FLOAT_FIELDS = {"quiet_seconds": 0.0, "stable_seconds": 0.0, "forced_seconds": 0.0, "job_timeout": 1.0,
                "send_backoff": 0.01, "send_backoff_max": 0.01, "retention_days": 0.0,
                # node intake and security
                "association_request_timeout": 0.1}
# --- node core safety (health, heartbeats, retention): minimums of its settings ---
INT_FIELDS.update({"max_job_runs": 1})
FLOAT_FIELDS.update({"heartbeat_timeout": 1.0, "retention_interval": 0.1})
# --- end node core safety ---
ROLES = ("t1n", "t1c", "t2w", "t2f")
DESTINATION_KEYS = ("name", "ae_title", "host", "port", "tls")


class ConfigError(ConfigurationError, ValueError):
    """A setting with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Runtime settings of the application (see app.yaml for their meaning)."""

    input: Path = Path("input")
    output: Path = Path("output")
    models: Path = REPO_ROOT / "models"
    workdir: Path = Path(".")
    device: str = "auto"
    precision: str = "auto"
    reference_role: str = "t1c"
    series_rules: Path | None = None
    sw_batch_size: int | None = None
    mirror_tta: bool | None = None
    progress: bool = True
    log_level: str = "INFO"
    # The DICOM node (``python -m app serve``); see app.yaml for each setting's meaning.
    ae_title: str = "SEGMAMBA"
    port: int = 11112
    bind_address: str = "127.0.0.1"
    allowed_calling_aes: tuple[str, ...] = ()
    max_associations: int = 32
    max_study_instances: int = 10000
    max_study_mb: int = 4096
    spool: Path = Path("spool")
    inbox: Path | None = None
    quiet_seconds: float = 10.0
    stable_seconds: float = 60.0
    forced_seconds: float = 3600.0
    job_timeout: float = 1800.0
    job_retries: int = 2
    destinations: tuple[Mapping[str, Any], ...] = ()
    send_backoff: float = 5.0
    send_backoff_max: float = 600.0
    http_port: int = 8080
    http_bind: str = "127.0.0.1"
    retention_days: float = 7.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client_cert: bool = False
    # --- node core safety (health, heartbeats, retention); see app.yaml ---
    heartbeat_timeout: float = 60.0
    max_job_runs: int = 10
    retention_interval: float = 10.0
    # --- end node core safety ---
    # --- node intake and security (issue 13, part 2): starvation, web access, PHI, quarantine ---
    association_request_timeout: float = 5.0
    max_associations_per_peer: int = 16
    min_free_mb: int = 512
    quarantine_mb: int = 256
    http_auth: bool = True
    http_token: str | None = None
    http_user: str | None = None
    http_password: str | None = None
    show_phi: bool = False


def _convert(name: str, value: Any, base: Path) -> Any:
    """Parse a raw value (YAML, environment string or CLI) into the field's type."""
    if name in ("destinations", "allowed_calling_aes") and not value:
        return ()
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if name in OPTIONAL_FIELDS:
            return None
        raise ConfigError(f"setting {name!r} needs a value")
    if name in PATH_FIELDS:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else base / path
    if name in BOOL_FIELDS:
        return _boolean(name, value)
    if name in INT_FIELDS or name in FLOAT_FIELDS:
        return _number(name, value)
    if name == "reference_role" and value not in ROLES:
        raise ConfigError(f"setting 'reference_role' must be one of {ROLES}, got {value!r}")
    if name == "precision" and value not in PRECISIONS:
        raise ConfigError(f"setting 'precision' must be one of {PRECISIONS}, got {value!r}")
    if name == "allowed_calling_aes":
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if name == "destinations":
        return tuple(_destination(item) for item in (value.split(",") if isinstance(value, str) else value))
    return str(value)


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"setting {name!r} must be true or false, got {value!r}")
    return text in ("1", "true", "yes", "on")


def _number(name: str, value: Any) -> int | float:
    kind, minimum = (int, INT_FIELDS[name]) if name in INT_FIELDS else (float, FLOAT_FIELDS[name])
    words = "a positive integer" if kind is int and minimum == 1 else f"a number >= {minimum}"
    try:
        number = kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"setting {name!r} must be {words}, got {value!r}") from error
    if number < minimum:
        raise ConfigError(f"setting {name!r} must be {words}, got {value!r}")
    return number


def _destination(item: Any) -> dict[str, Any]:
    """A C-STORE destination from a mapping or from text ``NAME=AET@HOST:PORT[+tls]``."""
    if isinstance(item, str):
        match = re.fullmatch(r"\s*(?:([\w.-]+)=)?([^@=\s]{1,16})@([\w.:-]+):(\d+)(\+tls)?\s*", item)
        if not match:
            raise ConfigError(f"destination {item!r} must look like NAME=AET@HOST:PORT (optionally +tls)")
        name, aet, host, port, tls = match.groups()
        item = {"name": name or aet, "ae_title": aet, "host": host, "port": port, "tls": bool(tls)}
    if not isinstance(item, Mapping) or not {"ae_title", "host", "port"} <= set(item):
        raise ConfigError(f"destination {item!r} needs ae_title, host and port")
    unknown = sorted(set(item) - set(DESTINATION_KEYS))
    if unknown:
        raise ConfigError(f"destination {item!r}: unknown keys {unknown}; known: {list(DESTINATION_KEYS)}")
    port = _number("port", item["port"])
    return {"name": str(item.get("name") or item["ae_title"]), "ae_title": str(item["ae_title"]),
            "host": str(item["host"]), "port": port, "tls": _boolean("tls", item.get("tls", False))}


def _apply(settings: Settings, values: Mapping[str, Any], base: Path, source: str) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
    return replace(settings, **{k: _convert(k, v, base) for k, v in values.items()})


def load_settings(
    app_yaml: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Settings from ``app_yaml`` (default: $HOLOSCAN_CONFIG_PATH or the repo's app.yaml), then
    HOLOSCAN_* and SEGMAMBA_<SETTING> environment variables, then ``overrides`` (the CLI; None
    values are ignored). Relative paths in app.yaml are relative to the file's folder for
    ``models`` and to the working directory otherwise."""
    environ = os.environ if environ is None else environ
    cwd = cwd or Path.cwd()
    app_yaml = app_yaml or Path(environ.get("HOLOSCAN_CONFIG_PATH") or DEFAULT_APP_YAML)
    settings = Settings()
    if app_yaml.is_file():
        document = yaml.safe_load(app_yaml.read_text()) or {}
        from_file = dict(document.get("settings") or {})
        models = from_file.pop("models", None)
        settings = _apply(settings, from_file, cwd, str(app_yaml))
        if models is not None:
            settings = _apply(settings, {"models": models}, app_yaml.parent, str(app_yaml))
    from_env = {field: environ[var] for var, field in HOLOSCAN_ENV.items() if environ.get(var)}
    for f in fields(Settings):
        if ENV_PREFIX + f.name.upper() in environ:
            from_env[f.name] = environ[ENV_PREFIX + f.name.upper()]
    settings = _apply(settings, from_env, cwd, "environment")
    return _apply(settings, {k: v for k, v in (overrides or {}).items() if v is not None}, cwd, "command line")

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
    "HOLOSCAN_LOGS_PATH": "logs",
}
ENV_PREFIX = "SEGMAMBA_"
PATH_FIELDS = ("input", "output", "models", "workdir", "series_rules", "spool", "inbox", "tls_cert", "tls_key",
               "tls_ca", "logs")
OPTIONAL_FIELDS = ("series_rules", "sw_batch_size", "mirror_tta", "inbox", "tls_cert", "tls_key", "tls_ca",
                   "http_token", "http_user", "http_password", "logs")
LOG_FORMATS = ("text", "json")
BOOL_FIELDS = ("mirror_tta", "progress", "tls_require_client_cert", "http_auth", "show_phi", "output_sr",
               "output_rtstruct", "output_sc")
# Node settings: (minimum) per number; ints and floats both must be >= their minimum.
INT_FIELDS = {"sw_batch_size": 1, "port": 1, "http_port": 0, "job_retries": 0, "max_associations": 1,
              "max_study_instances": 1, "max_study_mb": 1,
              # node intake and security
              "max_associations_per_peer": 1, "min_free_mb": 0, "quarantine_mb": 0}
FLOAT_FIELDS = {"quiet_seconds": 0.0, "stable_seconds": 0.0, "forced_seconds": 0.0, "job_timeout": 1.0,
                "send_backoff": 0.01, "send_backoff_max": 0.01, "retention_days": 0.0,
                # node intake and security
                "association_request_timeout": 0.1,
                # delivery: seconds to wait for a Storage Commitment report before resending
                "commitment_timeout": 1.0}
# --- node core safety (health, heartbeats, retention): minimums of its settings ---
INT_FIELDS.update({"max_job_runs": 1})
FLOAT_FIELDS.update({"heartbeat_timeout": 1.0, "retention_interval": 0.1})
# --- end node core safety ---
ROLES = ("t1n", "t1c", "t2w", "t2f")
STEP_SWITCHES = ("card", "on", "off")  # registration / brain_extraction: the card's choice, or forced
DESTINATION_KEYS = ("name", "type", "ae_title", "host", "port", "tls", "url", "token_file", "storage_commitment")
DESTINATION_TYPES = ("dimse", "stow")


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
    registration: str = "card"
    brain_extraction: str = "card"
    progress: bool = True
    log_level: str = "INFO"
    log_format: str = "text"
    logs: Path | None = None
    # DICOM outputs besides the SEG (each its own series in the study; listed in report.json "outputs")
    output_sr: bool = True
    output_rtstruct: bool = False
    output_sc: bool = False
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
    commitment_timeout: float = 300.0
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
    if name == "log_format" and str(value).strip().lower() not in LOG_FORMATS:
        raise ConfigError(f"setting 'log_format' must be one of {LOG_FORMATS}, got {value!r}")
    if name == "log_format":
        return str(value).strip().lower()
    if name == "reference_role" and value not in ROLES:
        raise ConfigError(f"setting 'reference_role' must be one of {ROLES}, got {value!r}")
    if name in ("registration", "brain_extraction") and str(value).strip().lower() not in STEP_SWITCHES:
        raise ConfigError(f"setting {name!r} must be one of {STEP_SWITCHES}, got {value!r}")
    if name in ("registration", "brain_extraction"):
        return str(value).strip().lower()
    if name == "precision" and value not in PRECISIONS:
        raise ConfigError(f"setting 'precision' must be one of {PRECISIONS}, got {value!r}")
    if name == "allowed_calling_aes":
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if name == "destinations":
        parsed = tuple(_destination(item) for item in _destination_items(value))
        names = [d["name"] for d in parsed]
        if len(set(names)) < len(names):
            raise ConfigError(f"setting 'destinations': names must be unique (each has its own outbox), got {names}")
        return parsed
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


def _destination_items(value: Any) -> list[Any]:
    """Destinations from app.yaml (a list), the environment or the CLI (text, comma-separated or JSON/YAML)."""
    items = [value] if isinstance(value, (str, Mapping)) else list(value)
    found: list[Any] = []
    for item in items:
        if isinstance(item, str) and item.strip().startswith(("[", "{")):
            try:
                item = yaml.safe_load(item)
            except yaml.YAMLError as error:
                raise ConfigError(f"setting 'destinations': not a JSON/YAML list of mappings: {error}") from error
            found.extend([item] if isinstance(item, Mapping) else item)
        elif isinstance(item, str):
            found.extend(part for part in item.split(",") if part.strip())
        else:
            found.append(item)
    return found


def _destination(item: Any) -> dict[str, Any]:
    """A destination from a mapping or from text: ``NAME=AET@HOST:PORT[+tls][+commit]`` (C-STORE, ``+commit``:
    Storage Commitment required) or ``NAME=http(s)://.../dicom-web`` (STOW-RS)."""
    if isinstance(item, str):
        item = _destination_text(item)
    if not isinstance(item, Mapping):
        raise ConfigError(f"destination {item!r} must be a mapping or NAME=AET@HOST:PORT / NAME=URL")
    unknown = sorted(set(item) - set(DESTINATION_KEYS))
    if unknown:
        raise ConfigError(f"destination {item!r}: unknown keys {unknown}; known: {list(DESTINATION_KEYS)}")
    kind = str(item.get("type") or ("stow" if item.get("url") else "dimse")).lower()
    if kind not in DESTINATION_TYPES:
        raise ConfigError(f"destination {item!r}: type must be one of {DESTINATION_TYPES}")
    commitment = _boolean("storage_commitment", item.get("storage_commitment", False))
    token = item.get("token_file")
    if kind == "stow":
        url = str(item.get("url") or "")
        if not re.fullmatch(r"https?://[^\s]+", url):
            raise ConfigError(f"destination {item!r}: a stow destination needs url http(s)://host[:port]/path")
        if commitment:
            raise ConfigError(f"destination {item!r}: storage_commitment is a DIMSE service; the STOW-RS response "
                              "itself confirms each stored instance")
        extra = sorted(k for k in ("ae_title", "host", "port", "tls") if k in item)
        if extra:
            raise ConfigError(f"destination {item!r}: {extra} do not apply to a stow destination")
        return {"name": str(item.get("name") or url), "type": kind, "url": url.rstrip("/"),
                "token_file": str(Path(str(token)).expanduser()) if token else None, "storage_commitment": False}
    if not {"ae_title", "host", "port"} <= set(item):
        raise ConfigError(f"destination {item!r} needs ae_title, host and port")
    if token or item.get("url"):
        raise ConfigError(f"destination {item!r}: url and token_file apply to stow destinations only")
    port = _number("port", item["port"])
    return {"name": str(item.get("name") or item["ae_title"]), "type": kind, "ae_title": str(item["ae_title"]),
            "host": str(item["host"]), "port": port, "tls": _boolean("tls", item.get("tls", False)),
            "storage_commitment": commitment}


def _destination_text(text: str) -> dict[str, Any]:
    web = re.fullmatch(r"\s*([\w.-]+)=(https?://\S+?)(?:\+token=(\S+))?\s*", text)
    if web:
        name, url, token = web.groups()
        return {"name": name, "type": "stow", "url": url, **({"token_file": token} if token else {})}
    match = re.fullmatch(r"\s*(?:([\w.-]+)=)?([^@=\s]{1,16})@([\w.:-]+):(\d+)((?:\+tls|\+commit)*)\s*", text)
    if not match:
        raise ConfigError(f"destination {text!r} must look like NAME=AET@HOST:PORT (optionally +tls, +commit) "
                          "or NAME=http(s)://HOST/dicom-web (optionally +token=FILE)")
    name, aet, host, port, flags = match.groups()
    return {"name": name or aet, "ae_title": aet, "host": host, "port": port, "tls": "+tls" in flags,
            "storage_commitment": "+commit" in flags}


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

"""One configuration object, read from app.yaml, then the environment, then the command line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

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
PATH_FIELDS = ("input", "output", "models", "workdir", "series_rules")
ROLES = ("t1n", "t1c", "t2w", "t2f")


class ConfigError(ValueError):
    """A setting with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Runtime settings of the application (see app.yaml for their meaning)."""

    input: Path = Path("input")
    output: Path = Path("output")
    models: Path = REPO_ROOT / "models"
    workdir: Path = Path(".")
    device: str = "auto"
    reference_role: str = "t1c"
    series_rules: Path | None = None
    sw_batch_size: int | None = None
    mirror_tta: bool | None = None
    progress: bool = True
    log_level: str = "INFO"


def _convert(name: str, value: Any, base: Path) -> Any:
    """Parse a raw value (YAML, environment string or CLI) into the field's type."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if name in ("series_rules", "sw_batch_size", "mirror_tta"):
            return None
        raise ConfigError(f"setting {name!r} needs a value")
    if name in PATH_FIELDS:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else base / path
    if name in ("mirror_tta", "progress"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"setting {name!r} must be true or false, got {value!r}")
        return text in ("1", "true", "yes", "on")
    if name == "sw_batch_size":
        try:
            number = int(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"setting 'sw_batch_size' must be a positive integer, got {value!r}") from error
        if number < 1:
            raise ConfigError(f"setting 'sw_batch_size' must be a positive integer, got {value!r}")
        return number
    if name == "reference_role" and value not in ROLES:
        raise ConfigError(f"setting 'reference_role' must be one of {ROLES}, got {value!r}")
    return str(value)


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

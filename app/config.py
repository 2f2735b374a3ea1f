"""One configuration object, read from app.yaml, then the environment, then the command line.

Each setting is declared once, as a field of ``Settings`` made by ``setting``: its default, its
command-line help, and where they apply its minimum, its choices and its HOLOSCAN_* variable.
The loader's conversions and the command line's options are derived from those fields."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

import yaml

from app.allocator import ALLOCATORS
from operators.errors import ConfigurationError
from operators.precision import PRECISIONS
from operators.roles import ROLES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_APP_YAML = REPO_ROOT / "app.yaml"
ENV_PREFIX = "SEGMAMBA_"
STEP_SWITCHES = ("card", "on", "off")  # registration / brain_extraction: the card's choice, or forced
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DESTINATION_KEYS = ("name", "type", "ae_title", "host", "port", "tls", "url", "token_file", "storage_commitment")
DESTINATION_TYPES = ("dimse", "stow")


class ConfigError(ConfigurationError, ValueError):
    """A setting with a value that cannot be used."""


def setting(default: Any, help: str, *, minimum: float | None = None, choices: tuple[str, ...] = (),
            fold_case: bool = False, check_choices: bool = True, env: str | None = None) -> Any:
    """A Settings field. ``help`` (the option's help; ``{default}`` and ``{env}`` are filled in),
    ``minimum`` of a number, ``choices`` of a text (checked by the loader unless ``check_choices``
    is false, after lower-casing if ``fold_case``), ``env``: the MONAI Deploy variable that sets it."""
    text = help.format(default=default, env=env)
    return field(default=default, metadata={"help": text, "minimum": minimum, "choices": choices,
                                            "fold_case": fold_case, "check_choices": check_choices, "env": env})


@dataclass(frozen=True)
class Settings:
    """Runtime settings of the application (see app.yaml for their meaning)."""

    input: Path = setting(Path("input"), "folder of DICOM files of one study ({env})", env="HOLOSCAN_INPUT_PATH")
    output: Path = setting(Path("output"), "folder for the results ({env})", env="HOLOSCAN_OUTPUT_PATH")
    models: Path = setting(REPO_ROOT / "models", "model folder, or a folder holding one ({env})",
                           env="HOLOSCAN_MODEL_PATH")
    workdir: Path = setting(Path("."), "scratch folder ({env})", env="HOLOSCAN_WORKDIR")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N (default auto: CUDA when available)")
    precision: str = setting("auto", "network arithmetic (default auto: card, else bfloat16 on a BF16 CPU, float16 "
                                     "on CUDA)", choices=PRECISIONS)
    allocator: str = setting("auto", "memory allocator of the processes that run the network (default auto: "
                                     "jemalloc when installed, else the system's)", choices=ALLOCATORS,
                             fold_case=True)
    reference_role: str = setting("t1c", "series whose grid the SEG is drawn on (default {default})", choices=ROLES)
    series_rules: Path | None = setting(None, "series selection rules JSON (MONAI Deploy selector format)")
    sw_batch_size: int | None = setting(None, "sliding windows per forward pass (default: model card)", minimum=1)
    mirror_tta: bool | None = setting(None, "mirroring test-time augmentation over the card's mirror_axes "
                                            "(default: model card)")
    registration: str = setting("card", "rigid registration of every series onto the reference (default: model "
                                        "card)", choices=STEP_SWITCHES, fold_case=True)
    brain_extraction: str = setting("card", "deepbet brain mask applied to every channel (default: model card)",
                                    choices=STEP_SWITCHES, fold_case=True)
    progress: bool = setting(True, "progress bar during inference (default on)")
    # the loader leaves log_level unchecked (any name of the logging module), the command line offers these
    log_level: str = setting("INFO", "default {default}", choices=LOG_LEVELS, check_choices=False)
    log_format: str = setting("text", "text, or JSON lines with study_uid and job_id for log collectors (default "
                                      "{default})", choices=("text", "json"), fold_case=True)
    logs: Path | None = setting(None, "folder for log files beside stderr (default: ${env}, else none)",
                                env="HOLOSCAN_LOGS_PATH")
    # DICOM outputs besides the SEG (each its own series in the study; listed in report.json "outputs")
    output_sr: bool = setting(True, "TID 1500 SR of the volumes, measurement-report.dcm (default on)")
    output_rtstruct: bool = setting(False, "RT Structure Set of the contours, rtstruct.dcm (default off)")
    output_sc: bool = setting(False, "Secondary Capture overlay series, overlay/*.dcm (default off)")
    # The DICOM node (``python -m app serve``); see app.yaml for each setting's meaning.
    ae_title: str = setting("SEGMAMBA", "our AE title (default {default})")
    port: int = setting(11112, "DICOM port of the Storage SCP (default {default})", minimum=1)
    bind_address: str = setting("127.0.0.1", "address the SCP listens on (default {default})")
    allowed_calling_aes: tuple[str, ...] = setting((), "comma-separated calling AE titles accepted (default: any)")
    max_associations: int = setting(32, "concurrent associations (default {default})", minimum=1)
    max_study_instances: int = setting(10000, "instances accepted per study (default {default})", minimum=1)
    max_study_mb: int = setting(4096, "MiB accepted per study (default {default})", minimum=1)
    spool: Path = setting(Path("spool"), "spool folder: received instances, outputs, journal (default ./{default})")
    inbox: Path | None = setting(None, "watched folder for dropped DICOM files (default: none)")
    quiet_seconds: float = setting(10.0, "ready when all four sequences are present and quiet this long (default "
                                         "{default:g})", minimum=0.0)
    stable_seconds: float = setting(60.0, "ready anyway when quiet this long (default {default:g})", minimum=0.0)
    forced_seconds: float = setting(3600.0, "ready at the latest this long after the first instance (default "
                                            "{default:g})", minimum=0.0)
    job_timeout: float = setting(1800.0, "seconds one job may run (default {default:g})", minimum=1.0)
    job_retries: int = setting(2, "further attempts after a transient failure (default {default})", minimum=0)
    destinations: tuple[Mapping[str, Any], ...] = setting(
        (), "destination NAME=AET@HOST:PORT[+tls][+commit] (C-STORE, +commit: Storage Commitment required) or "
            "NAME=http(s)://HOST/dicom-web[+token=FILE] (STOW-RS), or a JSON list of mappings; repeat for several")
    send_backoff: float = setting(5.0, "first retry delay in seconds while a destination is down (default "
                                       "{default:g})", minimum=0.01)
    send_backoff_max: float = setting(600.0, "longest retry delay in seconds (default {default:g})", minimum=0.01)
    # delivery: seconds to wait for a Storage Commitment report before resending
    commitment_timeout: float = setting(300.0, "seconds to wait for a Storage Commitment report before sending "
                                               "again (default {default:g})", minimum=1.0)
    http_port: int = setting(8080, "web port: status page, /healthz, /metrics (default {default}; 0 = any free "
                                   "port)", minimum=0)
    http_bind: str = setting("127.0.0.1", "web address (default {default})")
    retention_days: float = setting(7.0, "delete spool files of finished jobs after this many days (default "
                                         "{default:g})", minimum=0.0)
    tls_cert: Path | None = setting(None, "PEM certificate: TLS on the SCP and on destinations marked +tls")
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_ca: Path | None = setting(None, "PEM CA bundle to verify peers")
    tls_require_client_cert: bool = setting(False, "SCP: require a client certificate signed by --tls-ca")
    # --- node core safety (health, heartbeats, retention); see app.yaml ---
    heartbeat_timeout: float = setting(60.0, "a running job without a worker heartbeat this long is requeued "
                                             "(default {default:g})", minimum=1.0)
    max_job_runs: int = setting(10, "a job started this often without an outcome fails (default {default})",
                                minimum=1)
    retention_interval: float = setting(10.0, "seconds between retention passes (default {default:g})", minimum=0.1)
    # --- end node core safety ---
    # --- node intake and security (issue 13, part 2): starvation, web access, PHI, quarantine ---
    association_request_timeout: float = setting(
        5.0, "seconds a new connection may take to send its A-ASSOCIATE-RQ (TLS handshake included) before it is "
             "closed; also pynetdicom's ACSE timeout (default {default:g})", minimum=0.1)
    dicom_network_timeout: float = setting(60.0, "seconds an association may stay silent before the SCP aborts it "
                                                 "(pynetdicom network timeout, default {default:g})", minimum=1.0)
    dicom_dimse_timeout: float = setting(60.0, "seconds the SCP waits for a DIMSE message of an association "
                                               "(pynetdicom DIMSE timeout, default {default:g})", minimum=1.0)
    max_associations_per_peer: int = setting(16, "concurrent connections from one IP address (default {default})",
                                             minimum=1)
    min_free_mb: int = setting(512, "answer 0xA700 while the spool has less free space, in MiB (default "
                                    "{default})", minimum=0)
    quarantine_mb: int = setting(256, "MiB of refused instances kept in <spool>/quarantine (default {default})",
                                 minimum=0)
    http_auth: bool = setting(True, "web pages need a token or basic auth; /healthz, /readyz stay open (default "
                                    "on)")
    http_token: str | None = setting(None, "bearer token (also the basic-auth password for any user); default: "
                                           "generated into <spool>/http-token")
    http_user: str | None = setting(None, "basic-auth user (with --http-password)")
    http_password: str | None = setting(None, "basic-auth password of --http-user (prefer SEGMAMBA_HTTP_PASSWORD)")
    show_phi: bool = setting(False, "show patient ID, accession and previews on the web pages (default: masked, no "
                                    "previews)")


DEFAULTS: Final = Settings()
SETTING_FIELDS: Final[dict[str, Field[Any]]] = {f.name: f for f in fields(Settings)}


def _kind(hint: Any) -> tuple[type, bool]:
    """The value type of an annotation (``tuple`` for tuples) and whether it admits None."""
    union = get_origin(hint) in (Union, types.UnionType)
    args = [arg for arg in get_args(hint) if arg is not type(None)] if union else [hint]
    base = args[0]
    return get_origin(base) or base, union and len(args) < len(get_args(hint))


KINDS: Final[dict[str, tuple[type, bool]]] = {name: _kind(hint) for name, hint in get_type_hints(Settings).items()}
# Environment variables that the MONAI Deploy runtime (MAP) sets, and the setting each fills.
HOLOSCAN_ENV: Final = {f.metadata["env"]: name for name, f in SETTING_FIELDS.items() if f.metadata["env"]}


def _convert(name: str, value: Any, base: Path) -> Any:
    """Parse a raw value (YAML, environment string or CLI) into the field's type."""
    kind, optional = KINDS[name]
    meta = SETTING_FIELDS[name].metadata
    if kind is tuple and not value:
        return ()
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if optional:
            return None
        raise ConfigError(f"setting {name!r} needs a value")
    if kind is Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else base / path
    if kind is bool:
        return _boolean(name, value)
    if kind in (int, float):
        return _number(name, value)
    if meta["choices"] and meta["check_choices"]:
        choice = str(value).strip().lower() if meta["fold_case"] else value
        if choice not in meta["choices"]:
            raise ConfigError(f"setting {name!r} must be one of {meta['choices']}, got {value!r}")
        return str(choice)
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
    """A number setting at or above its minimum (every number setting declares one)."""
    kind, minimum = KINDS[name][0], SETTING_FIELDS[name].metadata["minimum"]
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
    from_env = {name: environ[var] for var, name in HOLOSCAN_ENV.items() if environ.get(var)}
    for f in fields(Settings):
        if ENV_PREFIX + f.name.upper() in environ:
            from_env[f.name] = environ[ENV_PREFIX + f.name.upper()]
    settings = _apply(settings, from_env, cwd, "environment")
    return _apply(settings, {k: v for k, v in (overrides or {}).items() if v is not None}, cwd, "command line")

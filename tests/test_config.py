"""Settings come from app.yaml, then the environment, then the command line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from app.config import DEFAULT_APP_YAML, ConfigError, Settings, load_settings


def write_yaml(folder: Path, body: str) -> Path:
    path = folder / "app.yaml"
    path.write_text("application:\n  title: t\nsettings:\n" + body)
    return path


def test_layers_override_in_order(tmp_path: Path) -> None:
    app_yaml = write_yaml(tmp_path, "  device: cpu\n  sw_batch_size: 2\n  models: m\n  reference_role: t2f\n")
    from_file = load_settings(app_yaml, environ={}, cwd=tmp_path)
    assert (from_file.device, from_file.sw_batch_size, from_file.reference_role) == ("cpu", 2, "t2f")
    assert from_file.models == tmp_path / "m"

    env = {"SEGMAMBA_SW_BATCH_SIZE": "4", "HOLOSCAN_INPUT_PATH": "/data/in", "HOLOSCAN_MODEL_PATH": "/opt/models"}
    from_env = load_settings(app_yaml, environ=env, cwd=tmp_path)
    assert (from_env.sw_batch_size, from_env.input, from_env.models) == (4, Path("/data/in"), Path("/opt/models"))
    assert from_env.device == "cpu"

    from_cli = load_settings(app_yaml, environ=env, overrides={"sw_batch_size": 8, "device": None}, cwd=tmp_path)
    assert (from_cli.sw_batch_size, from_cli.device) == (8, "cpu")


def test_holoscan_config_path_selects_the_file(tmp_path: Path) -> None:
    app_yaml = write_yaml(tmp_path, "  mirror_tta: true\n")
    assert load_settings(environ={"HOLOSCAN_CONFIG_PATH": str(app_yaml)}, cwd=tmp_path).mirror_tta is True


@pytest.mark.parametrize(
    ("body", "message"),
    [("  devise: cpu\n", "unknown settings"), ("  sw_batch_size: 0\n", "positive integer"),
     ("  reference_role: t3\n", "reference_role"), ("  progress: maybe\n", "true or false")],
)
def test_bad_settings_are_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_yaml(tmp_path, body), environ={}, cwd=tmp_path)


def test_repository_app_yaml_loads() -> None:
    assert DEFAULT_APP_YAML.is_file(), f"{DEFAULT_APP_YAML} is missing"
    written = yaml.safe_load(DEFAULT_APP_YAML.read_text())["settings"]
    assert set(written) == {f.name for f in fields(Settings)}  # every setting is documented there
    settings = load_settings(environ={})
    assert settings.reference_role == "t1c" and settings.device == "auto"
    for name, value in written.items():
        loaded = getattr(settings, name)
        if isinstance(value, (bool, int, float, str)) and not isinstance(loaded, Path):
            assert loaded == value, name


def test_destinations_from_yaml_environment_and_cli(tmp_path: Path) -> None:
    app_yaml = write_yaml(tmp_path, "  destinations:\n"
                                    "    - {name: PACS, ae_title: ORTHANC, host: 10.0.0.5, port: 4242,"
                                    " storage_commitment: true}\n"
                                    "    - {name: WEB, type: stow, url: 'https://pacs.example/dicom-web/',"
                                    " token_file: /run/secrets/stow}\n")
    pacs, web = load_settings(app_yaml, environ={}, cwd=tmp_path).destinations
    assert pacs == {"name": "PACS", "type": "dimse", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242,
                    "tls": False, "storage_commitment": True}
    assert web == {"name": "WEB", "type": "stow", "url": "https://pacs.example/dicom-web",
                   "token_file": "/run/secrets/stow", "storage_commitment": False}
    env = {"SEGMAMBA_DESTINATIONS": "A=ORTHANC@127.0.0.1:4242+tls+commit,B=http://127.0.0.1:8042/dicom-web"}
    a, b = load_settings(app_yaml, environ=env, cwd=tmp_path).destinations
    assert (a["tls"], a["storage_commitment"], b["type"]) == (True, True, "stow")
    assert b["url"] == "http://127.0.0.1:8042/dicom-web"
    cli = ['[{"name": "J", "url": "http://h/dw"}]', "K=KAE@h:104+token=x"]
    with pytest.raises(ConfigError, match="NAME=AET@HOST:PORT"):
        load_settings(app_yaml, environ={}, overrides={"destinations": cli}, cwd=tmp_path)
    given = [cli[0], "K=KAE@h:104", "W=https://w/dw+token=/t"]
    j, k, w = load_settings(app_yaml, environ={}, overrides={"destinations": given}, cwd=tmp_path).destinations
    assert (j["type"], k["type"], w["token_file"]) == ("stow", "dimse", "/t")


@pytest.mark.parametrize(
    ("value", "message"),
    [("[{name: A, url: 'http://h/dw', storage_commitment: true}]", "STOW-RS response itself confirms"),
     ("[{name: A, url: 'ftp://h'}]", "needs url http"), ("[{name: A, type: hl7, url: 'http://h'}]", "type must be"),
     ("A=X@h:1,A=Y@h:2", "names must be unique"),
     ("[{name: A, ae_title: X, host: h}]", "needs ae_title, host and port"),
     ("[{name: A, ae_title: X, host: h, port: 1, token_file: t}]", "stow destinations only"),
     ("[{name: A, url: 'http://h', port: 1}]", "do not apply to a stow destination")],
)
def test_bad_destinations_are_named(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write_yaml(tmp_path, ""), environ={"SEGMAMBA_DESTINATIONS": value}, cwd=tmp_path)

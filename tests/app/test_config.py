"""Settings come from app.yaml, then the environment, then the command line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from app.config import DEFAULT_APP_YAML, KINDS, ConfigError, Settings, load_settings


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


# --- each setting declared once: its help, bounds and choices drive the loader and the command line ---


def test_every_setting_has_its_help_on_the_command_line() -> None:
    from app.cli import build_parser, build_serve_parser

    options = {action.dest: action for parser in (build_parser(), build_serve_parser()) for action in parser._actions}
    for f in fields(Settings):
        assert f.metadata["help"], f"{f.name} has no help"
        assert options[f.name].help == f.metadata["help"], f.name
        assert tuple(options[f.name].choices or ()) == f.metadata["choices"], f.name
        if KINDS[f.name][0] in (int, float):
            assert f.metadata["minimum"] is not None, f"number setting {f.name} has no minimum"


def test_component_defaults_are_the_settings_defaults() -> None:
    from app.node.completion import CompletionPolicy
    from app.node.receive.intake import Limits
    from app.node.receive.storage_scp import ScpConfig

    assert ScpConfig() == ScpConfig.from_settings(Settings())
    assert CompletionPolicy() == CompletionPolicy.from_settings(Settings())
    assert Limits() == Limits.from_settings(Settings())


def test_dicom_timeouts_reach_the_association_entity(tmp_path: Path) -> None:
    from app.node.receive.intake import Intake
    from app.node.receive.storage_scp import ScpConfig, StorageSCP
    from app.node.state.journal import Journal
    from app.node.state.spool import Spool

    default = Settings()
    assert (default.dicom_network_timeout, default.dicom_dimse_timeout) == (60.0, 60.0)  # as hard-coded before
    env = {"SEGMAMBA_DICOM_NETWORK_TIMEOUT": "90", "SEGMAMBA_DICOM_DIMSE_TIMEOUT": "45.5",
           "SEGMAMBA_ASSOCIATION_REQUEST_TIMEOUT": "7"}
    settings = load_settings(write_yaml(tmp_path, ""), environ=env, cwd=tmp_path)
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    try:
        ae = StorageSCP(ScpConfig.from_settings(settings), Intake(spool, journal)).ae
        assert (ae.network_timeout, ae.dimse_timeout, ae.acse_timeout) == (90.0, 45.5, 7.0)
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("dicom_network_timeout", "0.5", "setting 'dicom_network_timeout' must be a number >= 1.0, got '0.5'"),
     ("dicom_dimse_timeout", "soon", "setting 'dicom_dimse_timeout' must be a number >= 1.0, got 'soon'"),
     ("max_associations", "0", "setting 'max_associations' must be a positive integer, got '0'"),
     ("http_port", "-1", "setting 'http_port' must be a number >= 0, got '-1'"),
     ("send_backoff", "0", "setting 'send_backoff' must be a number >= 0.01, got '0'"),
     ("log_format", "xml", "setting 'log_format' must be one of ('text', 'json'), got 'xml'"),
     ("registration", "maybe", "setting 'registration' must be one of ('card', 'on', 'off'), got 'maybe'"),
     ("port", "", "setting 'port' needs a value")],
)
def test_values_outside_a_setting_are_refused(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, ""), environ={"SEGMAMBA_" + name.upper(): value}, cwd=tmp_path)
    assert str(caught.value) == message

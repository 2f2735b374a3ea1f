"""Every transfer syntax archives send decodes into the same volume; damaged frames fail the series.

Test slices are encoded here with dcmtk (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv), pydicom's
Dataset.compress (JPEG 2000 via pylibjpeg-openjpeg) and OpenJPH's ojph_compress (HTJ2K).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import UID

from operators.pixel_decoding import FrameDecodeError, decode_frame
from operators.study_loader import read_instances
from operators.volume import VolumeError, series_to_volume
from tests.support.paths import THRESHOLD_MODEL

DESCRIPTION = "AX T1 MPR+C"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 12-bit axial series (stored values 0..4095, rescale slope != 1), one file per slice."""
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Phantom

    folder = tmp_path_factory.mktemp("native")
    write_study(folder, Phantom(), [SeriesSpec("t1c", DESCRIPTION, rows=48, columns=52, slices=5,
                                                pixel_spacing=(4.0, 4.0), slice_thickness=6.0)], seed=5)
    return folder


def _eight_bit(path: Path, out: Path) -> None:
    """The slice as 8-bit stored values (what JPEG baseline holds), same rescaled intensities."""
    ds = pydicom.dcmread(path)
    ds.PixelData = (ds.pixel_array >> 4).astype(np.uint8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.RescaleSlope = pydicom.valuerep.format_number_as_ds(float(ds.RescaleSlope) * 16)
    ds.save_as(out, enforce_file_format=True)


def _tool(*args: str) -> Callable[[Path, Path], None]:
    def encode(path: Path, out: Path) -> None:
        subprocess.run([*args, str(path), str(out)], check=True, capture_output=True, timeout=60)

    return encode


def _pydicom(syntax: str, **options: Any) -> Callable[[Path, Path], None]:
    def encode(path: Path, out: Path) -> None:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, **options)
        ds.save_as(out, enforce_file_format=True)

    return encode


def _htj2k(syntax: str, *options: str) -> Callable[[Path, Path], None]:
    def encode(path: Path, out: Path) -> None:
        ds = pydicom.dcmread(path)
        pgm, j2c = out.with_suffix(".pgm"), out.with_suffix(".j2c")
        pgm.write_bytes(f"P5\n{ds.Columns} {ds.Rows}\n{(1 << ds.BitsStored) - 1}\n".encode()
                        + ds.pixel_array.astype(">u2").tobytes())
        subprocess.run(["ojph_compress", "-i", str(pgm), "-o", str(j2c), *options], check=True,
                       capture_output=True, timeout=60)
        ds.PixelData = encapsulate([j2c.read_bytes()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(out, enforce_file_format=True)
        pgm.unlink()
        j2c.unlink()

    return encode


# syntax -> (encoder, 8-bit source?, largest mean error allowed relative to the mean intensity; 0 = lossless)
ENCODINGS: dict[str, tuple[Callable[[Path, Path], None], bool, float]] = {
    "1.2.840.10008.1.2.4.70": (_tool("dcmcjpeg", "+e1"), False, 0.0),
    "1.2.840.10008.1.2.4.57": (_tool("dcmcjpeg", "+el", "+sv", "4"), False, 0.0),
    "1.2.840.10008.1.2.4.50": (_tool("dcmcjpeg", "+eb", "+q", "95", "+sr", "+rm"), True, 0.03),
    "1.2.840.10008.1.2.4.51": (_tool("dcmcjpeg", "+ee", "+q", "95", "+sr", "+rm"), False, 0.03),
    "1.2.840.10008.1.2.4.80": (_tool("dcmcjpls", "+el"), False, 0.0),
    "1.2.840.10008.1.2.4.81": (_tool("dcmcjpls", "+en", "+md", "2"), False, 0.01),
    "1.2.840.10008.1.2.4.90": (_pydicom("1.2.840.10008.1.2.4.90"), False, 0.0),
    "1.2.840.10008.1.2.4.91": (_pydicom("1.2.840.10008.1.2.4.91", j2k_cr=[2]), False, 0.03),
    "1.2.840.10008.1.2.4.201": (_htj2k("1.2.840.10008.1.2.4.201", "-reversible", "true"), False, 0.0),
    "1.2.840.10008.1.2.4.202": (_htj2k("1.2.840.10008.1.2.4.202", "-reversible", "true", "-prog_order", "RPCL"),
                                False, 0.0),
    "1.2.840.10008.1.2.4.203": (_htj2k("1.2.840.10008.1.2.4.203", "-reversible", "false", "-qstep", "0.002"),
                                False, 0.03),
    "1.2.840.10008.1.2.5": (_tool("dcmcrle"), False, 0.0),
    "1.2.840.10008.1.2.1.99": (_tool("dcmconv", "+td"), False, 0.0),
    "1.2.840.10008.1.2.2": (_tool("dcmconv", "+tb"), False, 0.0),
    "1.2.840.10008.1.2": (_tool("dcmconv", "+ti"), False, 0.0),
}


def _encode_series(source: Path, out: Path, syntax: str) -> Path:
    """The series in ``syntax``, in a nested folder ``out/DICOM/S1`` with names without extension."""
    encoder, eight_bit, _ = ENCODINGS[syntax]
    folder = out / "DICOM" / "S1"
    folder.mkdir(parents=True)
    for number, path in enumerate(sorted(source.iterdir()), start=1):
        target = folder / f"IM{number:04d}"
        if eight_bit:
            _eight_bit(path, out / "eight.dcm")
            path = out / "eight.dcm"
        encoder(path, target)
    (out / "eight.dcm").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def native_volume(source: Path) -> Any:
    return series_to_volume(read_instances(source))


@pytest.mark.parametrize("syntax", sorted(ENCODINGS))
def test_every_transfer_syntax_decodes_into_the_volume(
    syntax: str, source: Path, native_volume: Any, tmp_path: Path
) -> None:
    folder = _encode_series(source, tmp_path, syntax)
    instances = read_instances(folder)
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in instances} == {syntax}, UID(syntax).name
    volume = series_to_volume(instances)
    np.testing.assert_allclose(volume.affine, native_volume.affine)
    _, eight_bit, tolerance = ENCODINGS[syntax]
    expected = _eight_bit_volume(source, tmp_path / "eight") if eight_bit else native_volume.array
    if tolerance == 0.0:
        np.testing.assert_array_equal(volume.array, expected)
    else:
        error = float(np.abs(volume.array - expected).mean()) / float(expected.mean())
        assert 0.0 < error <= tolerance, (UID(syntax).name, error)
        assert np.corrcoef(volume.array.ravel(), expected.ravel())[0, 1] > 0.99


def _eight_bit_volume(source: Path, folder: Path) -> np.ndarray:
    folder.mkdir()
    for path in sorted(source.iterdir()):
        _eight_bit(path, folder / path.name)
    return series_to_volume(read_instances(folder)).array


# --- damaged frames fail the series, naming the series and the file ------------------------------

ENCAPSULATED = sorted(syntax for syntax in ENCODINGS if UID(syntax).is_encapsulated)


def _rewrite_frame(path: Path, change: Callable[[bytes], bytes]) -> None:
    ds = pydicom.dcmread(path)
    frame = change(get_frame(ds.PixelData, 0, number_of_frames=1))
    ds.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2)])
    ds.save_as(path)


def _expect_refused(folder: Path, damaged: str, reason: str) -> VolumeError:
    instances = read_instances(folder)
    with pytest.raises(VolumeError) as raised:
        series_to_volume(instances)
    error = raised.value
    message = str(error)
    assert error.file == damaged and f"file {damaged}" in message, message
    assert DESCRIPTION in error.series and str(instances[0].SeriesInstanceUID) in error.series
    assert error.series in message and reason in message, message
    return error


@pytest.mark.parametrize("syntax", ENCAPSULATED)
def test_truncated_frame_fails_the_series(syntax: str, source: Path, tmp_path: Path) -> None:
    """Cut short as by an interrupted transfer; libjpeg alone fills such JPEG streams silently."""
    folder = _encode_series(source, tmp_path, syntax)
    _rewrite_frame(folder / "DICOM" / "S1" / "IM0003", lambda frame: frame[: len(frame) * 6 // 10])
    reason = "does not decode" if syntax == "1.2.840.10008.1.2.5" else "truncated"
    _expect_refused(folder, "DICOM/S1/IM0003", reason)


def test_invalid_entropy_code_fails_the_series(source: Path, tmp_path: Path) -> None:
    """A run of 1-bits (stuffed 0xFF 0x00 bytes) is no valid Huffman code: the decoder must refuse it."""
    folder = _encode_series(source, tmp_path, "1.2.840.10008.1.2.4.51")
    ones = b"\xff\x00" * 4
    _rewrite_frame(folder / "DICOM" / "S1" / "IM0002",
                   lambda f: f[: len(f) // 2] + ones + f[len(f) // 2 + len(ones):])
    _expect_refused(folder, "DICOM/S1/IM0002", "does not decode")


def test_values_outside_the_stored_range_fail_the_series(source: Path, tmp_path: Path) -> None:
    """A bit flip in JPEG-LS data decodes without complaint into values no 12-bit scanner stores."""
    folder = _encode_series(source, tmp_path, "1.2.840.10008.1.2.4.80")
    _rewrite_frame(folder / "DICOM" / "S1" / "IM0004", lambda f: f[: len(f) // 2] + bytes([f[len(f) // 2] ^ 0xFF])
                   + f[len(f) // 2 + 1:])
    _expect_refused(folder, "DICOM/S1/IM0004", "exceed the 12-bit stored range")


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90"])
def test_frame_of_another_size_fails_the_series(syntax: str, source: Path, tmp_path: Path) -> None:
    """The header claims 40 rows, the compressed frames hold 48: refused before any decoder pads or crops."""
    folder = _encode_series(source, tmp_path, syntax)
    for path in sorted((folder / "DICOM" / "S1").iterdir()):
        ds = pydicom.dcmread(path)
        ds.Rows = 40
        ds.save_as(path)
    instances = read_instances(folder)
    with pytest.raises(VolumeError, match=r"compressed frame is 48 x 52 x 1 .* header says 40 x 52 x 1") as raised:
        series_to_volume(instances)
    assert raised.value.file.startswith("DICOM/S1/IM") and f"file {raised.value.file}" in str(raised.value)


def test_decoder_warning_fails_the_series(source: Path, tmp_path: Path) -> None:
    """Native frames longer than the header's matrix: pydicom warns and crops; the series is refused."""
    folder = _encode_series(source, tmp_path, "1.2.840.10008.1.2.1.99")
    for path in sorted((folder / "DICOM" / "S1").iterdir()):
        ds = pydicom.dcmread(path)
        ds.Rows = 40
        ds.save_as(path)
    instances = read_instances(folder)
    with pytest.raises(VolumeError, match=r"decoder warned: The pixel data is 4992 bytes.*excess padding") as raised:
        series_to_volume(instances)
    assert raised.value.file.startswith("DICOM/S1/IM") and DESCRIPTION in raised.value.series


def test_a_resource_warning_of_another_object_does_not_fail_a_frame(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The garbage collector may finalise an unrelated TemporaryDirectory while a frame decodes: its
    ResourceWarning is not the decoder's, so the clean frame decodes."""
    import warnings

    from pydicom.pixels.decoders.base import Decoder

    folder = _encode_series(source, tmp_path, "1.2.840.10008.1.2.4.70")
    ds = pydicom.dcmread(folder / "DICOM" / "S1" / "IM0002")
    decode = Decoder.as_array

    def decode_while_collecting(self: Decoder, *args: object, **kwargs: object) -> object:
        warnings.warn("Implicitly cleaning up <TemporaryDirectory '/tmp/x'>", ResourceWarning, stacklevel=1)
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "as_array", decode_while_collecting)
    assert decode_frame(ds).shape == (48, 52)


def test_clean_frames_decode_without_logging_noise(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused frame is reported once, by the exception: no plugin traceback in the log."""
    folder = _encode_series(source, tmp_path, "1.2.840.10008.1.2.4.90")
    _rewrite_frame(folder / "DICOM" / "S1" / "IM0003", lambda frame: frame[: len(frame) // 2] + b"\xff\xd9")
    ds = pydicom.dcmread(folder / "DICOM" / "S1" / "IM0003")
    caplog.clear()  # the encoder's own log lines (openjpeg.encode) are not the decoder's
    with caplog.at_level("DEBUG"), pytest.raises(FrameDecodeError, match="does not decode"):
        decode_frame(ds)
    assert "Traceback" not in caplog.text and not caplog.records, caplog.text
    clean = pydicom.dcmread(folder / "DICOM" / "S1" / "IM0002")
    assert decode_frame(clean).shape == (48, 52)


def test_broken_series_fails_the_study_in_one_line(
    small_study: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `python -m app`: the study fails with the series and the file, and nothing is written."""
    from app.cli import main

    folder = tmp_path / "in"
    shutil.copytree(small_study.series[0].files[0].parent, folder)
    flair = next(info for info in small_study.series if info.spec.contrast == "t2f")
    damaged = flair.files[10].name
    ENCODINGS["1.2.840.10008.1.2.4.70"][0](flair.files[10], folder / damaged)
    _rewrite_frame(folder / damaged, lambda frame: frame[: len(frame) // 2])
    code = main(["-i", str(folder), "-o", str(tmp_path / "out"), "-m",
                 str(THRESHOLD_MODEL)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert code == 2 and len(errors) == 1, errors
    assert small_study.study_instance_uid in errors[0]
    assert f"file {damaged}" in errors[0] and flair.series_instance_uid in errors[0], errors[0]
    assert "truncated" in errors[0] and "Traceback" not in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_encoded_copies_are_independent(source: Path) -> None:
    """The module fixture stays native (other tests rely on it)."""
    datasets = [pydicom.dcmread(path) for path in sorted(source.iterdir())]
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {"1.2.840.10008.1.2.1"}
    assert copy.deepcopy(datasets[0]).pixel_array.max() <= 4095

"""A seeded corpus of hostile DICOM files, made from good instances (no files in git).

``fuzz_cases(sources, count, seed)`` yields ``count`` cases cycling through the kinds below; each
case is one instance moved to a study of its own (fresh, seed-derived UIDs), so a node must fail
or refuse exactly that study and nothing else. The same seed gives the same bytes.

kinds: byte flips, wrong VRs, wrong value multiplicities, truncated files, deep sequences, huge
element lengths, hostile UIDs.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
KINDS = ("byte_flip", "wrong_vr", "wrong_vm", "truncated", "deep_sequence", "huge_length", "hostile_uid")


@dataclass(frozen=True)
class FuzzCase:
    """One hostile file: its name, kind, a short description and its bytes."""

    name: str
    kind: str
    what: str
    data: bytes


def _fresh(ds: pydicom.Dataset, seed: int, index: int) -> pydicom.Dataset:
    """``ds`` (read afresh) moved to a study of its own (UIDs derived from seed and index)."""
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index), "fuzz-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index), "fuzz-series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index), "fuzz-sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _byte_flip(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(_bytes(ds))
    header_end = max(200, data.find(PIXEL_DATA_TAG))
    flips = rng.randint(1, 8)
    for _ in range(flips):
        at = rng.randrange(132, header_end)
        data[at] ^= 1 << rng.randrange(8)
    return f"{flips} bit flip(s) in the header", bytes(data)


def _wrong_vr(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    choices: list[tuple[str, Callable[[], DataElement]]] = [
        ("ImagePositionPatient as LO text", lambda: DataElement(0x00200032, "LO", "left\\up\\x")),
        ("ImageOrientationPatient as an empty SQ", lambda: DataElement(0x00200037, "SQ", DicomSequence([]))),
        ("PixelSpacing as FD bytes", lambda: DataElement(0x00280030, "OB", b"\x00\x01\x02\x03")),
        ("InstanceNumber as text", lambda: DataElement(0x00200013, "LO", "first")),
        ("ImagesInAcquisition as text", lambda: DataElement(0x00201002, "LO", "many")),
        ("SliceThickness as text", lambda: DataElement(0x00180050, "LO", "thin")),
    ]
    what, element = rng.choice(choices)
    ds[element().tag] = element()
    return what, _bytes(ds)


def _wrong_vm(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    choices = [("ImagePositionPatient", [1.0]), ("ImagePositionPatient", [1.0, 2.0]),
               ("ImagePositionPatient", [1.0, 2.0, 3.0, 4.0]), ("ImageOrientationPatient", [1.0, 0.0, 0.0]),
               ("PixelSpacing", [0.5]), ("PixelSpacing", [0.5, 0.5, 0.5])]
    keyword, values = rng.choice(choices)
    setattr(ds, keyword, values)
    return f"{keyword} with {len(values)} value(s)", _bytes(ds)


def _truncated(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    data = _bytes(ds)
    cut = rng.randrange(132, len(data) - 1)
    return f"cut at byte {cut} of {len(data)}", data[:cut]


def _deep_sequence(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    depth = rng.choice((64, 500, 3000))
    data = _bytes(ds)
    at = data.find(PIXEL_DATA_TAG)
    start = struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                           0xFFFFFFFF)
    end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return f"sequence nested {depth} deep", data[:at] + start * depth + end * depth + data[at:]


def _huge_length(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(_bytes(ds))
    at = data.find(PIXEL_DATA_TAG)
    length = rng.choice((0xFFFFFFF0, 0x7FFFFFFF, len(data) * 4))
    if at > 0 and data[at + 4:at + 6] in (b"OW", b"OB"):
        data[at + 8:at + 12] = struct.pack("<I", length)
        return f"PixelData length {length:#x}", bytes(data)
    return "no PixelData; appended a huge private element", bytes(data) + struct.pack(
        "<HH2sHI", 0x0009, 0x0010, b"OB", 0, length)


def _hostile_uid(ds: pydicom.Dataset, rng: random.Random) -> tuple[str, bytes]:
    keyword = rng.choice(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    value = rng.choice(("../../../../etc/passwd", "1.2.3/../../x", "1." + "9" * 120, "1.2.\x00.3", "1.2.3;rm -rf /",
                        "", "0001.02", "1.2.3 ", "C:\\\\windows\\\\system32"))
    setattr(ds, keyword, value)  # the file meta keeps its valid MediaStorageSOPInstanceUID
    return f"{keyword} {value[:40]!r}", _bytes(ds)


MUTATORS: dict[str, Callable[[pydicom.Dataset, random.Random], tuple[str, bytes]]] = {
    "byte_flip": _byte_flip, "wrong_vr": _wrong_vr, "wrong_vm": _wrong_vm, "truncated": _truncated,
    "deep_sequence": _deep_sequence, "huge_length": _huge_length, "hostile_uid": _hostile_uid,
}


def fuzz_cases(sources: Sequence[Path], count: int, seed: int = 0) -> Iterator[FuzzCase]:
    """``count`` hostile files made from the instances ``sources`` (see the module docstring)."""
    rng = random.Random(seed)
    paths = sorted(sources)
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        ds = _fresh(pydicom.dcmread(rng.choice(paths)), seed, index)
        what, data = MUTATORS[kind](ds, rng)
        yield FuzzCase(f"fuzz-{seed}-{index:04d}-{kind}.dcm", kind, what, data)

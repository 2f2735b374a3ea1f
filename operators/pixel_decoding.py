"""Strict decoding of one frame of DICOM pixel data, native or compressed.

pydicom's pixel-data plugins (pylibjpeg with its libjpeg/openjpeg/rle plugins, pinned in
requirements.txt) decode every transfer syntax that archives send, but not all of them refuse damaged data:
libjpeg fills a truncated JPEG Lossless or JPEG-LS stream with made-up rows and returns no
error, and pydicom falls back from a plugin that failed to the next one that may not. So each
frame is checked before and after decoding:

- encapsulated JPEG family (baseline, extended, lossless, JPEG-LS): the stream starts with SOI
  and ends with EOI, and its frame header (SOF) has the dataset's rows, columns and samples;
- JPEG 2000 and HTJ2K: the codestream starts with SOC+SIZ and ends with EOC, and SIZ has the
  dataset's size and components;
- the decoder is chosen (pylibjpeg, which handles every syntax including 12-bit JPEG and
  HTJ2K), not tried in turn, and any warning it emits fails the frame;
- the decoded frame has the dataset's shape and its values fit in BitsStored.

A bit flip inside entropy-coded data that still forms a valid stream cannot be detected by any
decoder (these formats carry no checksum); the checks catch truncation, wrong sizes, invalid
codes (the decoder raises) and values outside the stored range.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import UID

JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50",  # baseline
    "1.2.840.10008.1.2.4.51",  # extended (12-bit)
    "1.2.840.10008.1.2.4.57",  # lossless, process 14
    "1.2.840.10008.1.2.4.70",  # lossless, process 14 SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
JPEG_2000_FAMILY = {
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
PREFERRED_PLUGIN = "pylibjpeg"
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class FrameDecodeError(Exception):
    """A frame that did not decode cleanly; the message says why (without the file or series)."""


def decode_frame(dataset: pydicom.Dataset, index: int = 0) -> np.ndarray:
    """Frame ``index`` (0-based) of ``dataset`` as stored values ([row, column]), checked strictly."""
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    frames = int(dataset.get("NumberOfFrames") or 1)
    if not 0 <= index < frames:
        raise FrameDecodeError(f"frame {index + 1} requested of {frames}")
    if syntax.is_encapsulated:
        check_codestream(_encapsulated_frame(dataset, index, frames), dataset, syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise FrameDecodeError(f"transfer syntax {syntax.name} ({syntax}) has no pixel decoder") from error
    if not decoder.is_available:
        raise FrameDecodeError(
            f"no decoder plugin installed for {syntax.name} ({syntax}); missing: {decoder.missing_dependencies}"
        )
    plugin = PREFERRED_PLUGIN if PREFERRED_PLUGIN in decoder.available_plugins else ""
    with warnings.catch_warnings(record=True) as caught, _pydicom_quiet():
        warnings.simplefilter("always")
        try:
            array, _ = decoder.as_array(dataset, index=index, decoding_plugin=plugin)
        except Exception as error:  # plugins raise RuntimeError, ValueError, OSError, ...
            raise FrameDecodeError(f"{syntax.name} data does not decode ({_summary(error)})") from error
    # Only the decoder's own warnings count: a ResourceWarning of some other object that the garbage
    # collector happens to finalise during decoding (a TemporaryDirectory, an open file) says nothing
    # about this frame.
    decoder_warnings = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    if decoder_warnings:
        raise FrameDecodeError(f"decoder warned: {_summary(decoder_warnings[0].message)}")
    _check_array(array, dataset)
    return array


@contextmanager
def _pydicom_quiet() -> Iterator[None]:
    """Silence pydicom's logger while decoding: it logs each failing plugin with a traceback, and the
    failure is reported once, as a FrameDecodeError, instead."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_codestream(data: bytes, dataset: pydicom.Dataset, syntax: str) -> None:
    """Refuse an encapsulated frame that is truncated or whose header disagrees with the dataset."""
    data = bytes(data).rstrip(b"\x00")  # an odd-length frame is padded with one 0x00
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if syntax in JPEG_FAMILY:
        size = _jpeg_size(data)
    elif syntax in JPEG_2000_FAMILY:
        size = _j2k_size(data)
    else:
        return
    stream_rows, stream_columns, stream_samples = size
    if (stream_columns, stream_samples) != (columns, samples) or stream_rows not in (rows, 0):
        raise FrameDecodeError(
            f"compressed frame is {stream_rows} x {stream_columns} x {stream_samples} "
            f"(rows x columns x samples), the header says {rows} x {columns} x {samples}"
        )


def _encapsulated_frame(dataset: pydicom.Dataset, index: int, frames: int) -> bytes:
    try:
        return get_frame(dataset.PixelData, index, number_of_frames=frames)
    except (ValueError, IndexError, KeyError, struct.error) as error:
        raise FrameDecodeError(f"encapsulated pixel data has no readable frame {index + 1} ({error})") from error


def _jpeg_size(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) from a JPEG / JPEG-LS stream that starts with SOI and ends with EOI."""
    if not data.startswith(b"\xff\xd8"):
        raise FrameDecodeError("JPEG stream does not start with SOI (not JPEG data)")
    if not data.endswith(b"\xff\xd9"):
        raise FrameDecodeError("JPEG stream does not end with EOI (truncated)")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise FrameDecodeError(f"JPEG stream has no marker at byte {position} before its frame header")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in _SOF_MARKERS:
            if position + 10 > len(data):
                break
            rows, columns = struct.unpack(">HH", data[position + 5 : position + 9])
            return rows, columns, data[position + 9]
        position += 2 + length
    raise FrameDecodeError("JPEG stream has no frame header (SOF)")


def _j2k_size(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) from a JPEG 2000 codestream (or JP2 file) that ends with EOC."""
    if data.startswith(_JP2_SIGNATURE):
        start = data.find(b"\xff\x4f\xff\x51")
        data = data[start:] if start >= 0 else b""
    if not data.startswith(b"\xff\x4f\xff\x51") or len(data) < 42:
        raise FrameDecodeError("JPEG 2000 codestream does not start with SOC and SIZ (not JPEG 2000 data)")
    if not data.endswith(b"\xff\xd9"):
        raise FrameDecodeError("JPEG 2000 codestream does not end with EOC (truncated)")
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", data[8:24])
    components = struct.unpack(">H", data[40:42])[0]
    return y_size - y_offset, x_size - x_offset, components


def _check_array(array: np.ndarray, dataset: pydicom.Dataset) -> None:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    if array.shape != expected:
        raise FrameDecodeError(f"decoded frame has shape {array.shape}, the header says {expected}")
    if array.dtype.kind not in "iu":
        return
    bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    signed = int(dataset.get("PixelRepresentation") or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        raise FrameDecodeError(
            f"decoded values {int(array.min())}..{int(array.max())} exceed the {bits}-bit stored range "
            "(corrupt data)"
        )


def _summary(message: object) -> str:
    """The last line of a (plugin) message: pydicom puts the plugin's own reason there."""
    text = str(message).strip()
    return text.splitlines()[-1].strip() if text else type(message).__name__

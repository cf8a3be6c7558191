"""When each image of a DICOM CT perfusion study was acquired, whatever the vendor put it in.

The time comes from the first of :data:`TIME_SOURCES` that every image carries with distinct values at each slice
position: GE's private Mid Scan Time (GE cine runs repeat one ``AcquisitionTime`` on every frame), then the
standard attributes. Malformed values are refused naming the file.
"""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import numpy as np
import pydicom

from .files import CTPDataError

GE_MID_SCAN_TIME = "GEMidScanTime"
"""GE's private "Mid Scan Time [sec]", (0019,xx24) in the ``GEMS_ACQU_01`` block: the per-frame time of a cine
acquisition, whose standard time attributes are the run's start on every frame. GE stores it in a DS element
as a binary little-endian double (text is accepted too)."""

TIME_SOURCES = (
    GE_MID_SCAN_TIME,
    "AcquisitionDateTime",
    "AcquisitionTime",
    "ContentTime",
    "TriggerTime",
    "TemporalPositionIndex",
)
"""Where a CTP image's time is read from: the first that every image carries with distinct values at each slice
position (a cine run's constant ``AcquisitionTime`` is skipped)."""


def time_value(header, source: str):
    """The raw value of ``source`` in ``header`` (see :data:`TIME_SOURCES`), ``None`` when absent."""
    if source != GE_MID_SCAN_TIME:
        value = header.get(source)
        return None if value in (None, "") else value
    try:
        block = header.private_block(0x0019, "GEMS_ACQU_01")
    except KeyError:
        return None
    element = header.get_item(block.get_tag(0x24))  # unconverted: the bytes as stored
    return None if element is None or not element.value else element.value


def ge_seconds(raw) -> float:
    """GE's Mid Scan Time: a binary little-endian double in a DS element, or (rewritten files) DS text."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            return float(raw.decode("ascii").strip("\x00 "))
        except (UnicodeDecodeError, ValueError):
            if len(raw) != 8:
                raise ValueError(f"{len(raw)} bytes, neither DS text nor one 8-byte double") from None
            value = struct.unpack("<d", bytes(raw))[0]
            if not np.isfinite(value):
                raise ValueError("not a finite double") from None
            return value
    return float(raw)


def image_seconds(header, source: str) -> float | None:
    """The time of one image in seconds from ``source`` (see :data:`TIME_SOURCES`), ``None`` when absent."""
    value = time_value(header, source)
    if value is None:
        return None
    try:
        return parse_time(header, source, value)
    except (TypeError, ValueError, OverflowError) as err:
        raise CTPDataError(f"{header.filename}: {source} {value!r} is not a valid time ({err}).") from err


def parse_time(header, source: str, value) -> float | None:
    if source == GE_MID_SCAN_TIME:
        return ge_seconds(value)
    if source == "AcquisitionDateTime":
        dt = pydicom.valuerep.DT(value)
        return dt.replace(tzinfo=None).timestamp() if isinstance(dt, datetime.datetime) else None
    if source in ("AcquisitionTime", "ContentTime"):
        tm = pydicom.valuerep.TM(value)
        seconds = tm.hour * 3600 + tm.minute * 60 + tm.second + tm.microsecond / 1e6
        date = header.get(source.replace("Time", "Date"))
        if date:
            day = pydicom.valuerep.DA(date)
            seconds += datetime.datetime(day.year, day.month, day.day).timestamp()
        return seconds
    if source == "TriggerTime":
        return float(value) / 1000.0
    return float(value)  # TemporalPositionIndex: an order, scaled by the frame interval later


def time_source(images: list[tuple[Path, object]]) -> str:
    """The first of :data:`TIME_SOURCES` that every image carries with distinct values at each slice position
    (some scanners stamp every image of a series with the series' start in one of them)."""
    carried = [s for s in TIME_SOURCES if all(time_value(header, s) is not None for _, header in images)]
    if not carried:
        missing = next(path for path, h in images if all(time_value(h, s) is None for s in TIME_SOURCES))
        raise CTPDataError(
            f"{missing}: no usable acquisition time (none of {', '.join(TIME_SOURCES)}); cannot order the CTP frames."
        )
    positions = [tuple(np.round(np.asarray(h.get("ImagePositionPatient") or [0, 0, 0], float), 2)) for _, h in images]
    for source in carried:
        if len({(p, image_seconds(h, source)) for p, (_, h) in zip(positions, images)}) == len(images):
            return source
    return carried[0]  # none tells the frames apart: the duplicate check names the images

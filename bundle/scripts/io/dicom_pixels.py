"""One DICOM image's pixels in modality units, decoded whatever the transfer syntax, or refused with the file named.

pydicom decodes (pylibjpeg for JPEG Lossless and JPEG-LS, openjpeg for JPEG 2000, pylibjpeg-rle for RLE); before
that, a JPEG-family codestream must end with its end marker: the decoders turn a stream cut short into an image of
garbage without an error.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

from .files import CTPDataError

JPEG_FAMILY = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes}
"""Transfer syntaxes whose codestream ends with an end marker (JPEG EOI, JPEG 2000 EOC: both FF D9)."""


def check_codestream_complete(ds: pydicom.Dataset) -> None:
    """Refuse a JPEG, JPEG-LS or JPEG 2000 image whose codestream lacks its end marker: the decoders turn a
    stream cut short into an image of garbage without a word (a truncated JPEG Lossless CT image decodes with
    errors of thousands of HU)."""
    if ds.file_meta.TransferSyntaxUID in JPEG_FAMILY:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        if not frame.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise ValueError("the compressed image stream is cut short (no end-of-image marker)")


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """One image's pixels (rows, columns) in modality units (HU for CT), decoded whatever the transfer syntax."""
    try:
        ds = pydicom.dcmread(path)
        check_codestream_complete(ds)
        pixels = ds.pixel_array
        return np.asarray(pydicom.pixels.apply_modality_lut(pixels, ds), dtype=np.float32)
    except Exception as err:  # decoders raise many types: missing plugin, corrupt stream, truncated file
        syntax = ""
        try:
            syntax = f" (transfer syntax {ds.file_meta.TransferSyntaxUID.name})"
        except Exception:
            pass
        raise CTPDataError(f"{path}: cannot decode the pixel data{syntax}: {err}") from err

"""An independent digital perfusion phantom after Kudo et al. (Radiology 2013;267:201-211).

Written apart from the cohort simulator (it imports nothing from ``simulate``, ``tracer`` or ``phantom``),
so the perfusion module can be scored on curves it was not tuned on. The design follows Kudo's:

* Each slice ("section") holds a grid of square tiles: columns cross the true MTT (Kudo's seven values
  3.43, 4, 4.8, 6, 8, 12 and 24 s, i.e. CBF/CBV = 17.5 ... 2.5 /min), rows the arrival delay (here
  0-5 s in 1 s steps; Kudo used 0-3 s). Every tile of a section has the same CBV (1-5 ml/100 g), so
  CBF = 60 CBV / MTT spans 2.5-87.5 ml/100 g/min, as in Kudo's phantom.
* Sections differ by CBV and by the residue function's shape: ``box`` (plug flow; Kudo's main shape),
  ``exponential`` (well mixed) and ``linear`` (transit times spread evenly over 0-2 MTT, a dispersed
  bed; the third of Kudo's shapes). Each is non-increasing with ``R(0) = 1`` and ``integral R = MTT``,
  so the true Tmax is the delay.
* The arterial input is Parker et al.'s population AIF (Magn Reson Med 2006;56:993-1000: two Gaussians
  for first pass and recirculation plus a sigmoid-gated exponential plateau), measured in patients, not
  a gamma variate: it has the slow plateau that real AIFs have and that the zero-padded deconvolution
  must cope with. It is scaled to ``aif_peak_hu`` and shifted to peak at ``aif_peak_s``.
* A tile's curve is ``(rho / k_H) (CBF / 6000) (AIF * R)(t - delay)``, the convolution computed on a grid
  ``fine_dt`` (0.01 s, 100x finer than 1 s frames), then read at the frame times: the deconvolution
  never sees an exact discrete convolution. Curves sit on a ``baseline_hu`` of 35 HU, get white Gaussian
  noise of ``noise_hu`` per voxel and frame, and are **rounded to integer HU** as scanners store them
  (``integer_hu=False`` keeps the exact values, to separate rounding from the rest).
* Between tiles runs a 2-pixel CSF gutter (10 HU, no enhancement); each section has an artery (the
  AIF times ``artery_partial_volume``, 1 by default: no partial volume) and a vein (the AIF delayed 5 s and
  dispersed, full volume) so the automatic AIF and its venous scaling can be tried. Scores are read in
  each tile's interior (``roi``), 3 pixels in from its edge, as Kudo's ROIs. ``skull_px`` > 0 rings the
  sections with bone (1000 HU), as a head's skull, for motion correction to register on.

``rho = 1.04`` g/ml and ``k_H = 0.73`` are the usual CT values; they make the truth directly comparable
with maps that invert the same relation. The frame times may be uneven (``frame_times``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

KUDO_MTT_S = (60 / 17.5, 4.0, 4.8, 6.0, 8.0, 12.0, 24.0)
"""Kudo's seven MTT columns (s): CBF/CBV = 17.5, 15, 12.5, 10, 7.5, 5 and 2.5 per minute."""

RESIDUE_SHAPES = ("box", "exponential", "linear")

CSF_HU = 10.0
BONE_HU = 1000.0
ARTERY = -1
VEIN = -2


def _parker(m: np.ndarray) -> np.ndarray:
    """Parker's AIF in its own units (mmol/l) at ``m`` minutes after injection."""
    gauss = sum(
        a / (s * np.sqrt(2 * np.pi)) * np.exp(-((m - c) ** 2) / (2 * s * s))
        for a, c, s in ((0.809, 0.17046, 0.0563), (0.330, 0.365, 0.132))
    )
    return gauss + 1.050 * np.exp(-0.1685 * m) / (1.0 + np.exp(-38.078 * (m - 0.483)))


@lru_cache(maxsize=1)
def _parker_peak() -> tuple[float, float, float]:
    """Onset value, time (min) and height above onset of Parker's first-pass peak."""
    fine = np.linspace(0.0, 0.5, 50001)
    onset = float(_parker(np.zeros(1))[0])  # the Gaussians' tails before injection: start from zero
    values = _parker(fine) - onset
    return onset, float(fine[np.argmax(values)]), float(values.max())


def parker_aif(t: np.ndarray, peak_hu: float = 300.0, peak_s: float = 16.0) -> np.ndarray:
    """Parker's population AIF (2006), rescaled to peak ``peak_hu`` above baseline at ``peak_s``.

    Published parameters (minutes, mmol): A = 0.809, 0.330; T = 0.17046, 0.365; sigma = 0.0563, 0.132;
    alpha = 1.050, beta = 0.1685, s = 38.078, tau = 0.483. Zero before the bolus arrives.
    """
    onset, peak_m, height = _parker_peak()
    m = np.asarray(t, dtype=np.float64) / 60.0 - (peak_s / 60.0 - peak_m)
    return np.where(m > 0, (_parker(m) - onset) * (peak_hu / height), 0.0).clip(0.0)


def residue(shape: str, t: np.ndarray, mtt: float) -> np.ndarray:
    """Residue function of the named shape: ``R(0) = 1``, non-increasing, ``integral R = mtt``."""
    t = np.asarray(t, dtype=np.float64)
    if shape == "box":
        out = (t < mtt).astype(np.float64)
    elif shape == "exponential":
        out = np.exp(-t / mtt)
    elif shape == "linear":
        out = np.clip(1.0 - t / (2.0 * mtt), 0.0, 1.0)
    else:
        raise ValueError(f"residue shape must be one of {RESIDUE_SHAPES}, got {shape!r}.")
    return np.where(t >= 0, out, 0.0)


@dataclass(frozen=True)
class PhantomDesign:
    """What the phantom crosses and how it is acquired; defaults give Kudo's design (15 sections)."""

    mtt_s: tuple[float, ...] = KUDO_MTT_S
    delays_s: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    cbv: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    shapes: tuple[str, ...] = RESIDUE_SHAPES
    tile_px: int = 16
    gutter_px: int = 2
    roi_margin_px: int = 3
    spacing_mm: float = 1.0
    baseline_hu: float = 35.0
    duration_s: float = 60.0
    aif_peak_hu: float = 300.0
    aif_peak_s: float = 16.0
    vein_delay_s: float = 5.0
    vein_dispersion_s: float = 3.0
    artery_partial_volume: float = 1.0
    skull_px: int = 0
    rho: float = 1.04
    k_h: float = 0.73
    fine_dt: float = 0.01
    integer_hu: bool = True

    def frame_times(self, frame_interval: float) -> np.ndarray:
        """Evenly spaced frame times (s) over ``duration_s``."""
        return np.arange(0.0, self.duration_s - 1e-9, frame_interval)


@dataclass
class DigitalPhantom:
    """A rendered phantom: the 4D series (integer HU as float32), its frame times and the truth."""

    ctp: np.ndarray
    frame_times: np.ndarray
    spacing: tuple[float, float, float]
    aif: np.ndarray
    truth: dict[str, np.ndarray]
    tile: np.ndarray
    roi: np.ndarray
    tiles: list[dict] = field(default_factory=list)
    noise_hu: float = 0.0

    @property
    def frame_interval(self) -> float:
        """The median frame interval (s)."""
        return float(np.median(np.diff(self.frame_times)))


def convolve(aif: np.ndarray, kernel: np.ndarray, dt: float) -> np.ndarray:
    n = aif.size
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    return np.fft.irfft(np.fft.rfft(aif, nfft) * np.fft.rfft(kernel, nfft), nfft)[:n] * dt


def vessel_curves(
    design: PhantomDesign, times: np.ndarray, fine: np.ndarray, aif_fine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The artery's curve (the AIF, sampled at ``times``) and the vein's (the AIF dispersed and delayed)."""
    d = design
    vein_fine = convolve(aif_fine, np.exp(-fine / d.vein_dispersion_s) / d.vein_dispersion_s, d.fine_dt)
    return np.interp(times, fine, aif_fine), np.interp(times - d.vein_delay_s, fine, vein_fine, left=0.0)


def make_phantom(
    design: PhantomDesign = PhantomDesign(),
    noise_hu: float = 0.0,
    frame_interval: float = 1.0,
    frame_times: np.ndarray | None = None,
    seed: int = 0,
) -> DigitalPhantom:
    """Render the phantom at the given frame timing and noise level.

    Args:
        design: what the tiles cross and how the study is acquired.
        noise_hu: standard deviation of the white Gaussian noise per voxel and frame (HU), before rounding.
        frame_interval: seconds between frames (ignored when ``frame_times`` is given).
        frame_times: acquisition time of each frame (s, increasing), e.g. uneven sampling.
        seed: noise seed.
    """
    d = design
    times = d.frame_times(frame_interval) if frame_times is None else np.asarray(frame_times, dtype=np.float64)
    fine = np.arange(0.0, times[-1] + max(d.delays_s) + 2.0, d.fine_dt)
    aif_fine = parker_aif(fine, d.aif_peak_hu, d.aif_peak_s)
    pitch = d.tile_px + d.gutter_px
    n_rows, n_cols = len(d.delays_s) + 1, len(d.mtt_s)  # the last row holds the artery and the vein
    rim = d.skull_px
    shape_xy = (n_cols * pitch + d.gutter_px + 2 * rim, n_rows * pitch + d.gutter_px + 2 * rim)
    n_z = len(sections := [(s, v) for s in d.shapes for v in d.cbv])
    enhancement = np.zeros((*shape_xy, n_z, times.size), dtype=np.float64)
    baseline = np.full((*shape_xy, n_z), CSF_HU)
    if rim:  # a skull around the tiles: what a registration holds on to in a head
        baseline[:rim], baseline[-rim:], baseline[:, :rim], baseline[:, -rim:] = (BONE_HU,) * 4
    tile = np.full((*shape_xy, n_z), -3, dtype=np.int32)
    roi = np.zeros((*shape_xy, n_z), dtype=bool)
    truth = {k: np.zeros((*shape_xy, n_z), dtype=np.float32) for k in ("cbf", "cbv", "mtt", "tmax")}
    tiles: list[dict] = []
    scale = d.rho / d.k_h

    def box(row: int, col: int) -> tuple[slice, slice]:
        x0, y0 = rim + d.gutter_px + col * pitch, rim + d.gutter_px + row * pitch
        return slice(x0, x0 + d.tile_px), slice(y0, y0 + d.tile_px)

    artery, vein = vessel_curves(d, times, fine, aif_fine)
    per_flow = {
        (shape, mtt): convolve(aif_fine, residue(shape, fine, mtt), d.fine_dt) for shape in d.shapes for mtt in d.mtt_s
    }  # AIF * R, once per shape and MTT

    for z, (shape, cbv) in enumerate(sections):
        for col, mtt in enumerate(d.mtt_s):
            cbf = 60.0 * cbv / mtt
            for row, delay in enumerate(d.delays_s):
                curve = scale * (cbf / 6000.0) * np.interp(times - delay, fine, per_flow[shape, mtt], left=0.0)
                sx, sy = box(row, col)
                enhancement[sx, sy, z] = curve
                baseline[sx, sy, z] = d.baseline_hu
                tile[sx, sy, z] = len(tiles)
                m = d.roi_margin_px
                roi[sx.start + m : sx.stop - m, sy.start + m : sy.stop - m, z] = True
                for key, value in (("cbf", cbf), ("cbv", cbv), ("mtt", mtt), ("tmax", delay)):
                    truth[key][sx, sy, z] = value
                tiles.append(dict(index=len(tiles), slice=z, shape=shape, cbv=cbv, mtt=mtt, cbf=cbf, delay=delay))
        # vessels: a 4x4 artery and a vein in the last row
        for col, (label, curve) in enumerate(((ARTERY, d.artery_partial_volume * artery), (VEIN, vein))):
            sx, sy = box(n_rows - 1, col)
            sx, sy = slice(sx.start + 6, sx.start + 10), slice(sy.start + 6, sy.start + 10)
            enhancement[sx, sy, z] = curve
            baseline[sx, sy, z] = 40.0
            tile[sx, sy, z] = label
    ctp = baseline[..., None] + enhancement
    if noise_hu > 0:
        ctp += np.random.default_rng(seed).normal(0.0, noise_hu, ctp.shape)
    return DigitalPhantom(
        ctp=(np.round(ctp) if d.integer_hu else ctp).astype(np.float32),
        frame_times=times,
        spacing=(d.spacing_mm, d.spacing_mm, 5.0),
        aif=artery.astype(np.float32),
        truth=truth,
        tile=tile,
        roi=roi,
        tiles=tiles,
        noise_hu=float(noise_hu),
    )


def tile_errors(phantom: DigitalPhantom, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per tile (in ``phantom.tiles`` order): the median over its ROI of the relative CBF and CBV errors
    and of the Tmax error (s, against the delay). Maps are arrays shaped like one frame."""
    index = phantom.tile[phantom.roi]
    out = {}
    for key, truth_key, relative in (("cbf", "cbf", True), ("cbv", "cbv", True), ("tmax", "tmax", False)):
        values = np.asarray(maps[key])[phantom.roi]
        truth = phantom.truth[truth_key][phantom.roi]
        err = values / truth - 1.0 if relative else values - truth
        out[key] = np.array([np.median(err[index == t["index"]]) for t in phantom.tiles])
    return out

"""Perfusion maps on the independent Kudo-style digital phantom: methods x noise x frame interval.

The phantom (``scripts.perfusion.digital_phantom``) is not the cohort simulator: Parker's population AIF with its
plateau, box / exponential / linear residues convolved on a 0.01 s grid, integer HU. For each frame interval
and noise level this prints, per method, the tiles' CBF and CBV relative errors and Tmax errors (each tile's
median over its ROI; then median and worst over tiles), and the Spearman rank correlation of CBF with truth.

Methods: the bundle's default (spike-aware oSVD) with the true AIF and with its automatic AIF, the bundle's
fixed bSVD 0.1, and reference implementations written here, not imported from the bundle: textbook bSVD
(Wu 2003, the block-circulant matrix and its SVD by numpy, truncation 0.05 / 0.1 / 0.2) and textbook oSVD
(Wu's oscillation index within the window, scaled by max k, ladder 0.005-0.5, the bundle's former default).
Tmax is the argmax of the residue for the references, the bundle's "rise" reading for the bundle.

First: small lesions (2-6 mm) against large tiles of the same tissue, per denoising (TIPS, Gaussian, none);
CBV, CBF and Tmax per residue shape with a partial-volumed artery (the automatic AIF's venous scaling); how far
CBF can be off in fits that explain a tile's curve as well as its truth (a grid of residues, least squares);
errors and voxel noise with the arterial and with each voxel's arrival baseline (``baseline="arrival"``); the
default against a gamma-residue model fitted voxel by voxel (what a prior on the residue's shape buys and costs).
Then: the issue's targets on the noise-free phantom, AIF quality of the automatic AIF, uneven sampling.
Run: python benchmarks/perfusion_phantom.py [--noise 0 5 10 20 --intervals 1 1.5 2] [--only-new [--tables ...]]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.perfusion import deconvolution  # noqa: E402
from scripts.perfusion.deconvolution import compute_perfusion_maps, residue_maps  # noqa: E402
from scripts.perfusion.denoising import signal_basis  # noqa: E402
from scripts.perfusion.digital_phantom import (  # noqa: E402
    RESIDUE_SHAPES,
    PhantomDesign,
    make_phantom,
    residue,
    tile_errors,
)
from scripts.perfusion.lesion_phantom import HEALTHY, lesion_errors, make_lesion_phantom  # noqa: E402

RHO, K_H = 1.04, 0.73  # the phantom's convention
WU_LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


# ---------------------------------------------------------------- reference implementation (textbook)
def reference_maps(phantom, aif: np.ndarray, truncation: float | None) -> dict[str, np.ndarray]:
    """Textbook block-circulant SVD on the ROI voxels: fixed ``truncation``, or Wu's oSVD when ``None``."""
    ctp, dt = phantom.ctp.astype(np.float64), phantom.frame_interval
    n_t = ctp.shape[-1]
    n_base = max(2, int(np.argmax(aif >= 0.1 * aif.max())) - 1)  # frames before the AIF rises
    base = ctp[..., :n_base].mean(axis=-1)
    conc = ctp - base[..., None]
    tissue = (base >= 20) & (base <= 80)
    weight = ndimage.gaussian_filter(tissue.astype(float), (1.5, 1.5, 0))
    smooth = np.stack([ndimage.gaussian_filter(conc[..., t] * tissue, (1.5, 1.5, 0)) for t in range(n_t)], -1)
    curves = (smooth / np.maximum(weight, 1e-6)[..., None])[phantom.roi]
    length = 2 * n_t
    padded = np.concatenate([aif, np.zeros(n_t)])
    matrix = dt * np.array([[padded[(i - j) % length] for j in range(length)] for i in range(length)])
    u, s, vt = np.linalg.svd(matrix)
    data = np.concatenate([curves, np.zeros_like(curves)], axis=1)

    def solve(lam: float) -> np.ndarray:
        inv = np.where(s >= lam * s.max(), 1.0 / s, 0.0)
        return data @ (vt.T * inv @ u.T).T

    if truncation is not None:
        k = solve(truncation)
    else:  # Wu 2003: raise the threshold until OI = sum|k_j - 2k_{j-1} + k_{j-2}| / (L max k) < 0.035
        k = solve(WU_LADDER[-1])
        todo = np.ones(len(k), dtype=bool)
        for lam in WU_LADDER:
            trial = solve(lam)
            oi = np.abs(np.diff(trial, 2, axis=1)).sum(axis=1) / (length * np.maximum(trial.max(axis=1), 1e-12))
            take = todo & (oi < 0.035)
            k[take], todo = trial[take], todo & ~take
    out = {}
    for key, values in (
        ("cbf", (K_H / RHO) * k.max(axis=1) * 6000.0),
        ("cbv", (K_H / RHO) * k.sum(axis=1) * dt * 100.0),
        ("tmax", k[:, :n_t].argmax(axis=1) * dt),
    ):
        full = np.zeros(phantom.roi.shape)
        full[phantom.roi] = values
        out[key] = full
    return out


# ---------------------------------------------------------------- the table
def bundle_maps(phantom, aif, **settings) -> dict[str, np.ndarray]:
    maps = compute_perfusion_maps(phantom.ctp, phantom.frame_interval, phantom.spacing[:2], aif=aif, **settings)
    return {**maps.as_dict(), "info": maps.info}


METHODS = {
    "bundle oSVD (default), true AIF": lambda ph: bundle_maps(ph, ph.aif),
    "bundle oSVD (default), auto AIF": lambda ph: bundle_maps(ph, None),
    "bundle bSVD 0.1, true AIF": lambda ph: bundle_maps(ph, ph.aif, method="bsvd", truncation=0.1),
    "ref bSVD 0.05": lambda ph: reference_maps(ph, ph.aif, 0.05),
    "ref bSVD 0.1": lambda ph: reference_maps(ph, ph.aif, 0.1),
    "ref bSVD 0.2": lambda ph: reference_maps(ph, ph.aif, 0.2),
    "ref oSVD (Wu; former default)": lambda ph: reference_maps(ph, ph.aif, None),
}


def pct(v: float) -> str:
    return f"{v:+.0%}"


def summary_row(ph, err: dict[str, np.ndarray], maps: dict) -> str:
    mtt = np.array([t["mtt"] for t in ph.tiles])
    cbf_truth = np.array([t["cbf"] for t in ph.tiles])
    cbf_est = cbf_truth * (1 + err["cbf"])
    cells = [pct(np.median(err["cbf"][sel])) for sel in (mtt < 4, (mtt >= 4) & (mtt <= 8), mtt >= 12)]
    worst = err["cbf"][mtt >= 4][np.argmax(np.abs(err["cbf"][mtt >= 4]))]
    rho = stats.spearmanr(cbf_truth, cbf_est).statistic
    return (
        f"{' | '.join(cells)} | {pct(worst)} | {np.median(np.abs(err['cbv'])):.0%} | "
        f"{pct(err['cbv'][np.argmax(np.abs(err['cbv']))])} | {np.mean(np.abs(err['tmax'])):.2f} | "
        f"{np.max(np.abs(err['tmax'])):.1f} | {rho:.3f}"
    )


def targets(ph, err: dict[str, np.ndarray], label: str) -> None:
    """The issue's noise-free targets, tile by tile."""
    mtt = np.array([t["mtt"] for t in ph.tiles])
    shapes = np.array([t["shape"] for t in ph.tiles])
    cbv = np.array([t["cbv"] for t in ph.tiles])
    print(f"\n{label}: tiles meeting each noise-free target (of {len(ph.tiles)} tiles)")
    for shape in (*dict.fromkeys(shapes), "all"):
        sel = np.ones(len(mtt), bool) if shape == "all" else shapes == shape
        cbf_ok = np.abs(err["cbf"][sel & (mtt >= 4)]) <= 0.15
        cbv_ok = np.abs(err["cbv"][sel]) <= 0.10
        cbv_ok2 = np.abs(err["cbv"][sel & (cbv >= 2) & (mtt <= 12)]) <= 0.10
        tmax_ok = np.abs(err["tmax"][sel]) <= 1.0
        print(
            f"- {shape}: CBF within 15 % (MTT >= 4 s) {cbf_ok.sum()}/{cbf_ok.size}; CBV within 10 % "
            f"{cbv_ok.sum()}/{cbv_ok.size} (CBV >= 2 and MTT <= 12 s: {cbv_ok2.sum()}/{cbv_ok2.size}); "
            f"Tmax within 1 s {tmax_ok.sum()}/{tmax_ok.size}"
        )
    # delay insensitivity: per (section, MTT column), CBF across the delays relative to their mean
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(ph.tiles):
        groups.setdefault((t["slice"], t["mtt"]), []).append(i)
    spread = [np.ptp(1 + err["cbf"][idx]) / np.mean(1 + err["cbf"][idx]) / 2 for idx in groups.values()]
    print(
        f"- delay insensitivity (CBF across 0-5 s delays within +-10 % of its mean): "
        f"{sum(s <= 0.10 for s in spread)}/{len(spread)} tile rows; median half-range {np.median(spread):.1%}"
    )


def small_lesion_table(seed: int, tips_ranges: tuple[float, ...] = ()) -> None:
    """CBF error of 2-6 mm lesions in healthy grey matter against a large tile of the same tissue, per denoising
    (and TIPS at each range scale of ``tips_ranges`` beside the default's)."""
    print(
        "\n### Small lesions (box residue, 8 sections, 1 mm pixels, true AIF): median CBF error per region\n\n"
        "Core: CBF 10, CBV 2, delay 2 s; penumbra: CBF 25, CBV 4, delay 4 s; around them grey matter CBF 60. "
        "Spearman: tile CBF against truth on the Kudo phantom at the same noise.\n"
    )
    sizes = ("2 mm", "4 mm", "6 mm", "large")
    print(
        f"| noise HU | denoising | {' | '.join('core ' + s for s in sizes)} | "
        f"{' | '.join('penumbra ' + s for s in sizes)} | Spearman CBF (Kudo) |"
    )
    print("|---|---|" + "---|" * (2 * len(sizes) + 1))
    settings = {"TIPS (default)": {}, "Gaussian": {"denoising": "gaussian"}, "none": {"smoothing_mm": 0.0}}
    settings.update({f"TIPS, tips_range {h:g}": {"tips_range": h} for h in tips_ranges})
    for noise in (0.0, 3.0, 5.0, 10.0, 20.0):
        ph = make_lesion_phantom(noise, sections=8, seed=seed)
        kudo = make_phantom(noise_hu=noise, seed=seed)
        truth = np.array([t["cbf"] for t in kudo.tiles])
        for label, extra in settings.items():
            maps = compute_perfusion_maps(ph.ctp, ph.frame_interval, ph.spacing[:2], aif=ph.aif, **extra)
            err = lesion_errors(ph, maps.cbf)
            tiles = tile_errors(kudo, bundle_maps(kudo, kudo.aif, **extra))["cbf"]
            rho = stats.spearmanr(truth, truth * (1 + tiles)).statistic
            cells = " | ".join(pct(err[c, s]) for c in ("core", "penumbra") for s in sizes)
            print(f"| {noise:g} | {label} | {cells} | {rho:.3f} |")


def separation_table(seed: int) -> None:
    """How far apart the TIPS filter sees a lesion's and healthy grey matter's single-voxel profiles: the signal part
    of their profile distance ``D^2`` (the filter's own: mean over the leading components of the squared projected
    difference, the basis taken from the noisy phantom as the filter takes it) in units of what noise alone gives
    two voxels of one tissue (``2 sigma^2``), and what a healthy neighbour then weighs against one of the lesion's
    own tissue at the default range scale (1)."""
    print(
        "\n### What one voxel's profile tells (the TIPS filter's distance, range scale 1)\n\n"
        "| noise HU | core vs healthy: signal / noise distance | healthy neighbour's weight, relative | "
        "penumbra vs healthy: signal / noise distance | healthy neighbour's weight, relative |\n|---|---|---|---|---|"
    )
    clean = make_lesion_phantom(0.0, sections=8, seed=seed)
    concentration = clean.ctp - clean.ctp[..., :5].mean(axis=-1, keepdims=True)
    healthy = concentration[clean.truth_cbf == HEALTHY[0]].mean(axis=0)
    tissue = clean.truth_cbf > 0
    for noise in (3.0, 10.0, 20.0):
        noisy = make_lesion_phantom(noise, sections=8, seed=seed).ctp
        basis = signal_basis(noisy - noisy[..., :5].mean(axis=-1, keepdims=True), tissue)
        cells = []
        for name in ("core", "penumbra"):
            lesion = concentration[clean.regions[name, "large"]].mean(axis=0)
            ratio = float(np.mean(((lesion - healthy) @ basis) ** 2)) / (2.0 * noise**2)
            cells += [f"{ratio:.2f}", f"{np.exp(-ratio / 2.0):.2f}"]
        print(f"| {noise:g} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------- can any method read CBF from these curves?
def model_curves(aif: np.ndarray, dt: float, family: list[tuple[str, float, float]], delays: np.ndarray) -> np.ndarray:
    """``int AIF(s) R(t - s - delay) ds`` at the frame times for each residue of ``family`` (name, MTT s, gamma
    shape; name a phantom shape or "gamma") and each delay, the sampled AIF interpolated linearly (``F = 1``)."""
    fine = dt / 20.0
    t_fine = np.arange(aif.size * 20) * fine
    aif_fine = np.interp(t_fine, np.arange(aif.size) * dt, aif)
    out = np.empty((len(family), delays.size, aif.size))
    for i, (name, mtt, shape) in enumerate(family):
        r = stats.gamma.sf(t_fine, shape, scale=mtt / shape) if name == "gamma" else residue(name, t_fine, mtt)
        conv = np.convolve(aif_fine, r)[: t_fine.size] * fine
        for j, delay in enumerate(delays):
            out[i, j] = np.interp(np.arange(aif.size) * dt - delay, t_fine, conv, left=0.0)
    return out


def identifiability_table(seed: int) -> None:
    """How far CBF can be from the truth in fits that explain a tile's curve at least as well as the truth.

    Each tile's ROI-mean curve (the phantom's own rendering: integer HU) is fitted by least squares (flow ``F``
    free) with every residue of a grid (the phantom's three shapes and gamma-distributed transit times with
    shape 1-200, MTT 1-40 s, delays -2 to 8 s) on the *true* sampled AIF. The fits whose residual sum of
    squares is no larger than that of the tile's own residue, MTT and delay are as consistent with the data as
    the truth; the spread of their CBF is what no deconvolution can resolve from the curve without a prior.
    Beside it, a method whose prior is the gamma family (exponential included): each tile's best fit among them.
    """
    print(
        "\n### CBF identifiability (tiles with CBF >= 30; the true sampled AIF; 1 s frames)\n\n"
        "Fits of each tile's mean curve at least as close to it (sum of squares) as the truth's own curve: the "
        "range of their CBF error (median over tiles of the lowest and the highest), and the tiles where such a "
        "fit is more than 10 % off.\n"
    )
    print(
        "| noise HU | shape | tiles | CBF error range of fits as good as the truth | tiles with a fit > 10 % off | "
        "best gamma-residue fit: mean CBF error |"
    )
    print("|---|---|---|---|---|---|")
    mtts = np.geomspace(1.0, 40.0, 60)
    family = [(name, m, 1.0) for name in RESIDUE_SHAPES for m in mtts]
    family += [("gamma", m, a) for m in mtts for a in (1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 50.0, 200.0)]
    for noise in (0.0, 3.0):
        for shape in RESIDUE_SHAPES:
            ph = make_phantom(PhantomDesign(shapes=(shape,)), noise_hu=noise, seed=seed)
            dt, n_t = ph.frame_interval, ph.frame_times.size
            delays = np.arange(-2.0, 8.0 + 1e-9, 0.25 * dt)
            basis = model_curves(ph.aif, dt, family, delays).reshape(-1, n_t)
            norms = np.einsum("jt,jt->j", basis, basis)
            gamma = np.repeat([name == "gamma" or name == "exponential" for name, _, _ in family], delays.size)
            low, high, best, off = [], [], [], 0
            tiles = [t for t in ph.tiles if t["cbf"] >= 30]
            for t in tiles:
                curve = ph.ctp[(ph.tile == t["index"]) & ph.roi].mean(axis=0)
                curve = curve - curve[:5].mean()
                truth = model_curves(ph.aif, dt, [(shape, t["mtt"], 1.0)], np.array([t["delay"]]))[0, 0]
                f_truth = truth @ curve / (truth @ truth)
                rss_truth = float(np.sum((curve - f_truth * truth) ** 2))
                f = basis @ curve / norms
                rss = curve @ curve - f * (basis @ curve)
                cbf = f[(rss <= rss_truth) & (f > 0)] * (K_H / RHO) * 6000.0
                fit = np.argmin(np.where(gamma & (f > 0), rss, np.inf))
                best.append(f[fit] * (K_H / RHO) * 6000.0 / t["cbf"] - 1.0)
                err = cbf / t["cbf"] - 1.0 if cbf.size else np.zeros(1)
                low.append(err.min())
                high.append(err.max())
                off += bool(np.abs(err).max() > 0.10)
            print(
                f"| {noise:g} | {shape} | {len(tiles)} | {pct(np.median(low))} to {pct(np.median(high))} | "
                f"{off}/{len(tiles)} | {pct(np.mean(best))} |"
            )


def measured_delays(tmax: np.ndarray, delay: np.ndarray) -> str:
    """Per-tile Tmax ``tmax`` (s) read as delays: the mean at each true delay of 1, 2 and 3 s minus the mean at none."""
    return " / ".join(f"{tmax[delay == d].mean() - tmax[delay == 0].mean():.2f}" for d in (1, 2, 3))


GAMMA_SHAPES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
GAMMA_MTTS_S = np.geomspace(1.0, 40.0, 50)
GAMMA_DELAYS_S = np.arange(-3.0, 10.0 + 1e-9, 0.25)
"""The grid :func:`gamma_fit_maps` searches: gamma shapes (1 is the exponential), MTTs and delays."""


def gamma_fit_maps(curves: np.ndarray, aif: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """CBF, CBV and Tmax of each curve ``(V, T)`` from its best least-squares fit among the gamma transit-time
    residues of the grid (:data:`GAMMA_SHAPES`, :data:`GAMMA_MTTS_S`, :data:`GAMMA_DELAYS_S`; flow free and
    positive): a parametric model in the manner of Mouridsen et al. (NeuroImage 2006;33:570), by exhaustive search."""
    mtts, delays = GAMMA_MTTS_S, GAMMA_DELAYS_S
    family = [("gamma", m, a) for a in GAMMA_SHAPES for m in mtts]
    basis = model_curves(aif, dt, family, delays).reshape(-1, aif.size).astype(np.float32)
    norms = np.einsum("jt,jt->j", basis, basis)
    proj = np.asarray(curves, dtype=np.float32) @ basis.T
    best = np.where(proj > 0, proj * proj / norms, -1.0).argmax(axis=1)
    flow = proj[np.arange(best.size), best] / norms[best]
    mtt = mtts[(best // delays.size) % mtts.size]
    scale = K_H / RHO
    return {"cbf": scale * flow * 6000.0, "cbv": scale * flow * mtt * 100.0, "tmax": delays[best % delays.size]}


def default_and_gamma_fit(ph, aif: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The default maps of phantom ``ph`` and the same with CBF, CBV and Tmax from :func:`gamma_fit_maps` on the
    curves and AIF the default deconvolved (its last call: after the arrival baseline)."""
    with mock.patch.object(deconvolution, "residue_maps", wraps=residue_maps) as spy:
        maps = compute_perfusion_maps(ph.ctp, ph.frame_interval, ph.spacing[:2], aif=aif)
    curves, used_aif, dt = spy.call_args.args[:3]
    default, fitted = maps.as_dict(), dict(maps.as_dict())
    for name, values in gamma_fit_maps(curves, used_aif, dt).items():
        fitted[name] = np.zeros(maps.tissue.shape, dtype=np.float32)
        fitted[name][maps.tissue] = values
    return default, fitted


def parametric_fit_table(seed: int, noise_levels: tuple[float, ...] = (3.0, 10.0)) -> None:
    """The default deconvolution against a gamma-residue model fitted voxel by voxel to the same denoised curves
    and AIF (the curves :func:`scripts.perfusion.deconvolution.residue_maps` receives), per residue shape."""
    print(
        "\n### A parametric residue prior, voxel by voxel (artery at 70 % partial volume, 1 s frames)\n\n"
        "The default (oSVD) against the best gamma transit-time residue (exponential included) fitted to each voxel's "
        "denoised curve with the same AIF; mean over tiles of each tile's median error, as the per-shape table.\n"
    )
    print(
        "| noise HU | shape | AIF | method | CBF error, CBF >= 30 | Pearson r CBF | CBV error, MTT <= 12 s | "
        "Tmax bias s | measured delay for 1 / 2 / 3 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for noise in noise_levels:
        for shape in ("exponential", "box", "linear"):
            ph = make_phantom(PhantomDesign(shapes=(shape,), artery_partial_volume=0.7), noise_hu=noise, seed=seed)
            cbf, mtt, delay = (np.array([t[k] for t in ph.tiles]) for k in ("cbf", "mtt", "delay"))
            for label, aif in (("automatic", None), ("true", ph.aif))[: 2 if noise <= 3 else 1]:
                default, fitted = default_and_gamma_fit(ph, aif)
                for method, values in (("oSVD (default)", default), ("gamma fit", fitted)):
                    err = tile_errors(ph, values)
                    measured = measured_delays(delay + err["tmax"], delay)
                    r = stats.pearsonr(cbf, cbf * (1 + err["cbf"])).statistic
                    print(
                        f"| {noise:g} | {shape} | {label} | {method} | {pct(err['cbf'][cbf >= 30].mean())} | {r:.3f} | "
                        f"{pct(err['cbv'][mtt <= 12].mean())} | {err['tmax'].mean():+.2f} | {measured} |",
                        flush=True,
                    )


def residue_shape_table(seed: int, noise_hu: float = 3.0) -> None:
    """CBV, CBF and Tmax per residue shape with a 70 % partial-volumed artery and a full-volume vein."""
    print(
        f"\n### Per residue shape: artery at 70 % partial volume, full-volume vein, {noise_hu:g} HU, 1 s frames\n\n"
        "Mean over tiles of each tile's median error; CBF over tiles with CBF >= 30; measured delay: mean Tmax of "
        "the tiles at that delay minus the mean at no delay; Tmax by delay: mean Tmax of the tiles at each delay.\n"
    )
    print(
        "| shape | AIF | VOF scale (ideal 1.43) | CBV error, MTT <= 12 s | CBV error, all | CBF error, CBF >= 30 | "
        "Pearson r CBF | Tmax bias s | measured delay for 1 / 2 / 3 s | Tmax s by delay "
        + " / ".join(f"{d:g}" for d in PhantomDesign().delays_s)
        + " s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in ("exponential", "box", "linear"):
        design = PhantomDesign(shapes=(shape,), artery_partial_volume=0.7)
        ph = make_phantom(design, noise_hu=noise_hu, seed=seed)
        mtt, cbf, delay = (np.array([t[k] for t in ph.tiles]) for k in ("mtt", "cbf", "delay"))
        for label, aif in (("true", ph.aif), ("automatic", None)):
            maps = compute_perfusion_maps(ph.ctp, ph.frame_interval, ph.spacing[:2], aif=aif)
            err = tile_errors(ph, maps.as_dict())
            tmax = delay + err["tmax"]
            measured = measured_delays(tmax, delay)
            by_delay = " / ".join(f"{tmax[delay == d].mean():.2f}" for d in design.delays_s)
            scale = maps.info.get("vof_scale")
            print(
                f"| {shape} | {label} | {'-' if aif is not None else f'{scale:.2f}'} | "
                f"{pct(err['cbv'][mtt <= 12].mean())} | {pct(err['cbv'].mean())} | "
                f"{pct(err['cbf'][cbf >= 30].mean())} | {stats.pearsonr(cbf, cbf * (1 + err['cbf'])).statistic:.3f} | "
                f"{err['tmax'].mean():+.2f} | {measured} | {by_delay} |"
            )


def baseline_table(seed: int, noise_levels: tuple[float, ...] = (3.0, 10.0)) -> None:
    """Errors and voxel noise of the maps with the arterial baseline and with each voxel's arrival baseline."""
    print(
        "\n### Baseline: frames before the artery rises (`aif`) or also before each voxel's own arrival (`arrival`)"
        "\n\nAll residue shapes, delays 0-5 s, automatic AIF, 1 s frames. Error: mean over tiles of each tile's "
        "median; noise: median over tiles of the spread (IQR / 1.349) of the voxels' relative error in the tile.\n"
    )
    print(
        "| noise HU | baseline | CBV error | CBV noise | CBF error, CBF ≥ 30 | CBF noise | Tmax bias s | Tmax noise s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for noise_hu in noise_levels:
        ph = make_phantom(PhantomDesign(), noise_hu=noise_hu, seed=seed)
        cbf = np.array([t["cbf"] for t in ph.tiles])
        index = ph.tile[ph.roi]
        for baseline in ("aif", "arrival"):
            maps = compute_perfusion_maps(ph.ctp, ph.frame_interval, ph.spacing[:2], baseline=baseline).as_dict()
            err = tile_errors(ph, maps)
            spread = {}
            for key in ("cbv", "cbf", "tmax"):
                values, truth = maps[key][ph.roi], ph.truth[key][ph.roi]
                voxel = values / truth - 1.0 if key != "tmax" else values - truth
                iqr = [np.subtract(*np.percentile(voxel[index == t["index"]], [75, 25])) for t in ph.tiles]
                spread[key] = float(np.median(iqr)) / 1.349
            print(
                f"| {noise_hu:g} | {baseline} | {pct(err['cbv'].mean())} | {spread['cbv']:.1%} | "
                f"{pct(err['cbf'][cbf >= 30].mean())} | {spread['cbf']:.1%} | {err['tmax'].mean():+.2f} | "
                f"{spread['tmax']:.2f} |"
            )


NEW_TABLES = {
    "small-lesions": small_lesion_table,
    "separation": separation_table,
    "residue-shapes": residue_shape_table,
    "baseline": baseline_table,
    "identifiability": identifiability_table,
    "parametric": parametric_fit_table,
}
"""The tables printed before the full phantom sweep (all of them with ``--only-new``), in order."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 5.0, 10.0, 20.0])
    parser.add_argument("--intervals", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-new", action="store_true", help="print only the small-lesion and residue tables")
    parser.add_argument(
        "--tables", nargs="+", choices=sorted(NEW_TABLES), default=list(NEW_TABLES), help="which of those to print"
    )
    parser.add_argument(
        "--tips-ranges", type=float, nargs="*", default=[], help="more TIPS range scales in the small-lesion table"
    )
    args = parser.parse_args()
    for name in args.tables:
        if name == "small-lesions":
            small_lesion_table(args.seed, tuple(args.tips_ranges))
        else:
            NEW_TABLES[name](args.seed)
    if args.only_new:
        return
    design = PhantomDesign()
    print(
        f"Kudo-style phantom: {len(design.shapes)} residue shapes x {len(design.cbv)} CBV sections, "
        f"{len(design.mtt_s)} MTT x {len(design.delays_s)} delays per section, {design.duration_s:g} s, "
        f"1 mm pixels, integer HU, noise seed {args.seed}"
    )
    print(
        "Per tile: median over its ROI; columns: median CBF error over tiles with MTT 3.4 s / 4-8 s / 12-24 s, "
        "worst CBF error over MTT >= 4 s, median |CBV error| and the worst, Tmax MAE and worst (s), "
        "Spearman of tile CBF with truth."
    )
    noise_free: dict[float, dict] = {}
    for interval in args.intervals:
        print(f"\n### frame interval {interval:g} s\n")
        print(
            "| noise HU | method | CBF MTT 3.4 | CBF MTT 4-8 | CBF MTT 12-24 | CBF worst (MTT>=4) | |CBV| median | "
            "CBV worst | Tmax MAE s | Tmax worst s | Spearman CBF |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for noise in args.noise:
            ph = make_phantom(design, noise_hu=noise, frame_interval=interval, seed=args.seed)
            errors = {}
            for name, run in METHODS.items():
                maps = run(ph)
                errors[name] = tile_errors(ph, maps)
                print(f"| {noise:g} | {name} | {summary_row(ph, errors[name], maps)} |")
                if name.endswith("auto AIF") and noise == args.noise[0]:
                    info = maps["info"]
                    true_peak = ph.frame_times[np.argmax(ph.aif)]
                    aif_quality = (
                        interval,
                        info["aif_peak_s"],
                        true_peak,
                        info["aif_area_hu_s"],
                        float(ph.aif.sum() * interval),
                    )
            default, bsvd = errors["bundle oSVD (default), true AIF"]["cbf"], errors["ref bSVD 0.1"]["cbf"]
            worse = np.abs(default) > np.abs(bsvd) + 0.05
            better = np.abs(default) < np.abs(bsvd) - 0.05
            print(
                f"| {noise:g} | default vs ref bSVD 0.1 | tiles where default's |CBF error| exceeds bSVD 0.1's "
                f"by > 5 points: {worse.sum()}/{worse.size}; is below it by > 5 points: {better.sum()}/{better.size}"
                " | | | | | | | | |"
            )
            if noise == 0:
                noise_free[interval] = (ph, errors)
        print(
            f"\nAutomatic AIF at {aif_quality[0]:g} s: peak {aif_quality[1]:.2f} s (true {aif_quality[2]:.2f} s "
            f"sampled), area {aif_quality[3]:.0f} HU s (true {aif_quality[4]:.0f}, "
            f"{aif_quality[3] / aif_quality[4] - 1:+.1%})"
        )
    for interval, (ph, errors) in noise_free.items():
        for name in ("bundle oSVD (default), true AIF", "bundle oSVD (default), auto AIF", "ref bSVD 0.1"):
            targets(ph, errors[name], f"{name}, {interval:g} s")
    # uneven sampling: 1 s to 30 s, then 2 s; against the even 1 s acquisition
    even = make_phantom(design, noise_hu=0.0, frame_interval=1.0)
    uneven_times = np.concatenate([np.arange(0.0, 30.0, 1.0), np.arange(30.0, design.duration_s, 2.0)])
    uneven = make_phantom(design, noise_hu=0.0, frame_times=uneven_times)
    ref = compute_perfusion_maps(even.ctp, 1.0, even.spacing[:2], aif=even.aif)
    start = time.perf_counter()
    got = compute_perfusion_maps(uneven.ctp, None, uneven.spacing[:2], aif=uneven.aif, frame_times=uneven_times)
    seconds = time.perf_counter() - start
    print(
        f"\nUneven sampling ({uneven_times.size} frames: 1 s to 30 s, then 2 s; {seconds:.1f} s) against even 1 s, "
        "median over ROI voxels of |uneven / even - 1|:"
    )
    for key in ("cbf", "cbv", "tmax"):
        a, b = got.as_dict()[key][even.roi], ref.as_dict()[key][even.roi]
        print(f"- {key}: {np.median(np.abs(a / np.maximum(b, 1e-6) - 1)):.1%}")


if __name__ == "__main__":
    main()

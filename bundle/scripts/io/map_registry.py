"""The perfusion maps the bundle knows, in one table: every list of maps elsewhere is derived from it.

One :class:`PerfusionMap` per map: its name (the datalist key and file stem ``<name>.nii.gz``), unit, the
plausible median of its brain voxels (what :func:`scripts.io.images.check_map_values` accepts), the display
window the network's colour encoding and the montage use, the ``SeriesDescription`` pattern of a vendor's
derived series, and its roles: ``network`` (an input of every input set), ``datalist`` (every datalist item
carries it), ``required`` (a vendor study must have it) and ``computed`` (the perfusion module makes it from a
raw series; ``PerfusionMaps`` has a field of its name). Adding a map is one entry here plus its
computation in :mod:`scripts.perfusion.deconvolution`; thresholds and baselines select maps by name.

The helpers read :data:`MAPS` when called (not at import), so a map added to the table reaches every user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerfusionMap:
    """What the bundle knows about one map."""

    name: str
    title: str
    unit: str
    window: tuple[float, float]
    dicom_pattern: str
    plausible_median: tuple[float, float] | None = None
    network: bool = False
    datalist: bool = False
    required: bool = False
    zero_outside_brain: bool = True
    computed: bool = True


ROLES = {"network": True, "datalist": True, "required": True}
"""The roles of the four maps of the paper's PMs."""

MAPS: dict[str, PerfusionMap] = {
    spec.name: spec
    for spec in (
        PerfusionMap("cbf", "cerebral blood flow", "ml/100 g/min", (0.0, 80.0), r"\bCBF\b", (5.0, 150.0), **ROLES),
        PerfusionMap("cbv", "cerebral blood volume", "ml/100 g", (0.0, 6.0), r"\bCBV\b", (0.5, 15.0), **ROLES),
        PerfusionMap("ttp", "time to peak", "s", (0.0, 40.0), r"\bTTP\b", (1.0, 100.0), **ROLES),
        PerfusionMap("tmax", "time to residue maximum", "s", (0.0, 12.0), r"\bT[ _-]?max\b", (-2.0, 30.0), **ROLES),
        PerfusionMap("mtt", "mean transit time", "s", (0.0, 16.0), r"\bMTT\b"),
        PerfusionMap(
            "mip",
            "maximum over time",
            "HU",
            (-20.0, 180.0),
            r"\bMIP\b",
            (10.0, 300.0),
            datalist=True,
            zero_outside_brain=False,
        ),
    )
}
"""Every map, in the bundle's channel order (cbf, cbv, ttp, tmax first: the network's inputs)."""


def map_names(**roles: bool) -> tuple[str, ...]:
    """Names of the maps with the given roles (``network``, ``datalist``, ``required``, ``computed``: each
    ``True`` or ``False``; a role not given is either), in :data:`MAPS` order."""
    return tuple(spec.name for spec in MAPS.values() if all(getattr(spec, r) == v for r, v in roles.items()))


def computed_maps() -> tuple[str, ...]:
    """The maps the perfusion module computes from a raw series."""
    return map_names(computed=True)


def network_maps() -> tuple[str, ...]:
    """The maps every network input set reads (the paper's PMs)."""
    return map_names(network=True)


def datalist_maps() -> tuple[str, ...]:
    """The maps every datalist item carries."""
    return map_names(datalist=True)


def required_maps() -> tuple[str, ...]:
    """The maps a vendor's DICOM study must have."""
    return map_names(required=True)


def signed_maps() -> tuple[str, ...]:
    """The maps that may read below 0: those whose plausible median range starts below 0 (Tmax, behind the artery
    chosen as AIF)."""
    return tuple(s.name for s in MAPS.values() if s.plausible_median is not None and s.plausible_median[0] < 0)


def display_windows() -> dict[str, tuple[float, float]]:
    """Display window (low, high) per map, in its unit."""
    return {name: spec.window for name, spec in MAPS.items()}


def dicom_patterns() -> dict[str, str]:
    """``SeriesDescription`` regular expression per map (case-insensitive)."""
    return {name: spec.dicom_pattern for name, spec in MAPS.items()}


def channel(maps: tuple[str, ...] | list[str], name: str) -> int:
    """Index of ``name`` among the stacked ``maps``; ``ValueError`` naming what is there when it is missing."""
    if name not in maps:
        raise ValueError(f"no {name} channel among the stacked maps {tuple(maps)}.")
    return list(maps).index(name)

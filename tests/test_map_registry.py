"""One place per map (``scripts.io.map_registry``): adding a map is one entry, and every user of maps follows."""

import numpy as np
import pytest
import torch

from scripts.io import CTPDataError, check_map_values, save_nifti, validate_item
from scripts.io.dicom_convert import import_vendor_maps
from scripts.io.map_registry import (
    MAPS,
    PerfusionMap,
    channel,
    computed_maps,
    datalist_maps,
    dicom_patterns,
    display_windows,
    network_maps,
    required_maps,
    signed_maps,
)
from scripts.learning.model.encoding import PerfusionColourEncoding
from scripts.learning.model.networks import create_network, input_set
from scripts.perfusion.deconvolution import PerfusionMaps
from scripts.perfusion.thresholds import ThresholdSegmentation, threshold_labels
from scripts.simulation.dicom_study import write_map_series

DUMMY = PerfusionMap(
    "rcbf", "relative CBF", "%", (0.0, 120.0), r"\brCBF\b", (20.0, 150.0), network=True, datalist=True, required=True,
    computed=False,
)  # fmt: skip


def test_the_tables_of_maps_are_the_registry():
    assert network_maps() == ("cbf", "cbv", "ttp", "tmax") == required_maps()
    assert datalist_maps() == ("cbf", "cbv", "ttp", "tmax", "mip")
    assert signed_maps() == ("tmax",)  # the only computed map not clipped at 0
    assert set(computed_maps()) == {"cbf", "cbv", "mtt", "ttp", "tmax", "mip"} == set(display_windows())
    assert all(hasattr(PerfusionMaps, "__dataclass_fields__") and name in PerfusionMaps.__dataclass_fields__
               for name in computed_maps())  # fmt: skip
    assert input_set("PMs+M+N") == (("cbf", "cbv", "ttp", "tmax", "mip"), True)
    with pytest.raises(ValueError, match="no tmax channel among"):
        channel(("cbf", "cbv"), "tmax")


def test_a_dummy_map_added_to_the_registry_reaches_every_user(monkeypatch, tmp_path):
    monkeypatch.setitem(MAPS, "rcbf", DUMMY)
    # datalists: an item without it is refused, naming it
    item = {
        "id": "p1",
        "label": "l",
        "nihss": 3,
        "group": "LVO",
        **{k: k for k in ("cbf", "cbv", "ttp", "tmax", "mip")},
    }
    with pytest.raises(CTPDataError, match="missing key\\(s\\) rcbf"):
        validate_item(item, "training[0]", check_files=False)
    # values: its plausible range applies (a power-of-ten scale is refused, a plausible map passes)
    check_map_values("rcbf", np.full((4, 4, 2), 80.0), "rcbf.nii.gz")
    with pytest.raises(CTPDataError, match="rcbf.nii.gz: rcbf has a median of 8000"):
        check_map_values("rcbf", np.full((4, 4, 2), 8000.0), "rcbf.nii.gz")
    # the network: a fifth encoder, coloured with the entry's window
    maps, use_nihss = input_set("PMs+N")
    assert maps == ("cbf", "cbv", "ttp", "tmax", "rcbf") and use_nihss
    net = create_network("SF", "PMs+N", encoder_width=0.125).eval()
    encoding = PerfusionColourEncoding(maps)
    assert encoding.low.flatten()[-1] == 0.0 and encoding.span.flatten()[-1] == 120.0
    with torch.no_grad():
        out = net(torch.rand(1, 5, 64, 64) * 50.0, torch.tensor([[7.0]]))
    assert out.shape == (1, 3, 64, 64)
    # the threshold baseline finds CBF and Tmax by name in the new channel order
    cbf, tmax = np.full((4, 4, 1), 50.0, np.float32), np.zeros((4, 4, 1), np.float32)
    cbf[0, 0], tmax[0, :2] = 5.0, 9.0
    stacked = torch.as_tensor(np.stack([np.ones_like(cbf), cbf, tmax, cbf, cbf]))[None]
    labels = ThresholdSegmentation(maps=("rcbf", "cbf", "tmax", "cbv", "ttp"))(stacked).argmax(1)[0]
    assert torch.equal(labels, torch.as_tensor(threshold_labels(cbf, tmax), dtype=torch.long))
    # a vendor's DICOM study: its series is found by the entry's pattern, and it is required
    assert dicom_patterns()["rcbf"] == r"\brCBF\b"
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    files = {}
    for name, value in (("cbf", 50.0), ("cbv", 4.0), ("ttp", 20.0), ("tmax", 1.0), ("mip", 40.0)):
        files[name] = save_nifti(tmp_path / f"{name}.nii.gz", np.full((8, 8, 2), value, np.float32), affine)
    descriptions = {"cbf": "CBF", "cbv": "CBV", "ttp": "TTP", "tmax": "Tmax", "mip": "MIP", "rcbf": "rCBF"}
    slopes = dict.fromkeys(descriptions, 0.01)
    write_map_series(files, tmp_path / "without", descriptions, slopes)
    with pytest.raises(CTPDataError, match="no series for rcbf"):
        import_vendor_maps(tmp_path / "without", tmp_path / "out0")
    files["rcbf"] = save_nifti(tmp_path / "rcbf.nii.gz", np.full((8, 8, 2), 90.0, np.float32), affine)
    write_map_series(files, tmp_path / "with", descriptions, slopes)
    written = import_vendor_maps(tmp_path / "with", tmp_path / "out1")
    assert "rcbf" in written

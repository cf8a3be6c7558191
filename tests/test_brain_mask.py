import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import MaskIntensityd

from scripts.perfusion.brain_mask import BrainMaskFromMIPd, brain_mask_from_mip, otsu_threshold
from scripts.simulation import phantom as ph
from scripts.simulation.simulate import simulate_study


@pytest.fixture(scope="module")
def study():
    return simulate_study("LVO", ph.Grid(size=96, slices=4), np.random.default_rng(8), noise_hu=12.0)


@pytest.mark.parametrize("method", ["threshold", "otsu"])
def test_mip_mask_covers_the_brain_and_excludes_skull_and_air(study, method):
    mask = brain_mask_from_mip(study.ctp.max(axis=-1), method=method)
    brain = (study.tissue == ph.GM) | (study.tissue == ph.WM)
    assert mask[brain].mean() > 0.99
    assert mask[study.label > 0].all()
    assert not mask[(study.tissue == ph.BONE) | (study.tissue == ph.AIR)].any()


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(100, 10.0), np.full(100, 50.0)])
    assert 10 < otsu_threshold(values) < 50


def test_transform_keeps_metadata_and_masks_predictions(study):
    mip = MetaTensor(torch.from_numpy(study.ctp.max(axis=-1))[None], affine=torch.eye(4) * 2)
    data = BrainMaskFromMIPd(keys="mip")({"mip": mip, "pred": torch.ones(1, *study.label.shape)})
    assert isinstance(data["brain"], MetaTensor) and data["brain"].shape == mip.shape
    torch.testing.assert_close(data["brain"].affine, mip.affine)
    masked = MaskIntensityd(keys="pred", mask_key="brain")(data)["pred"]
    assert masked[0][study.tissue == ph.AIR].sum() == 0
    assert masked[0][study.label > 0].min() == 1
    with pytest.raises(ValueError, match="method"):
        brain_mask_from_mip(np.zeros((4, 4, 1)), method="magic")

import numpy as np
import pytest
from scipy import ndimage

from scripts.physics import K_H, RHO
from scripts.simulation import phantom as ph
from scripts.simulation.cohort import draw_nihss, group_counts, split_patients
from scripts.simulation.simulate import simulate_study, voxel_noise_sigma

GRID = ph.Grid(size=96, slices=4)


@pytest.fixture(scope="module")
def lvo():
    return simulate_study("LVO", GRID, np.random.default_rng(11), noise_hu=0.0, lesion_model="separable")


def test_same_seed_same_study_other_seed_other_study():
    a = simulate_study("Non-LVO", GRID, np.random.default_rng(4), noise_hu=8.0)
    b = simulate_study("Non-LVO", GRID, np.random.default_rng(4), noise_hu=8.0)
    c = simulate_study("Non-LVO", GRID, np.random.default_rng(5), noise_hu=8.0)
    np.testing.assert_array_equal(a.ctp, b.ctp)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.ctp, c.ctp)


def test_head_phantom_has_every_tissue_class(lvo):
    present = set(np.unique(lvo.tissue).tolist())
    assert {ph.AIR, ph.BONE, ph.CSF, ph.GM, ph.WM, ph.ARTERY, ph.VEIN} <= present
    first = lvo.ctp[..., 0]
    assert np.median(first[lvo.tissue == ph.BONE]) > 500
    assert (
        np.median(first[lvo.tissue == ph.GM])
        > np.median(first[lvo.tissue == ph.WM])
        > np.median(first[lvo.tissue == ph.CSF])
    )
    gm, wm = lvo.tissue == ph.GM, lvo.tissue == ph.WM
    healthy = lvo.state == ph.HEALTHY
    assert 45 < np.median(lvo.truth["cbf"][gm & healthy]) < 80
    assert 15 < np.median(lvo.truth["cbf"][wm & healthy]) < 35
    assert lvo.truth["cbf"][gm & healthy].std() > 2.0  # within-class variation


def test_lvo_lesion_core_inside_penumbra_with_benign_oligaemia_rim(lvo):
    core, penumbra = lvo.state == ph.CORE, lvo.state == ph.PENUMBRA
    oligaemia = lvo.state == ph.OLIGAEMIA
    assert core.sum() > 0 and penumbra.sum() > core.sum() and oligaemia.sum() > 0
    # core borders penumbra, not healthy tissue (2D neighbourhood, within the brain)
    brain = (lvo.tissue == ph.GM) | (lvo.tissue == ph.WM)
    ring = ndimage.binary_dilation(core, np.ones((3, 3, 1), bool)) & ~core & brain
    assert ring.sum() > 0 and (lvo.state[ring] == ph.PENUMBRA).mean() > 0.8
    tmax = lvo.truth["tmax"]
    assert tmax[penumbra].min() > 6.0 and tmax[core].min() >= 10.0
    assert 2.0 <= tmax[oligaemia].min() and tmax[oligaemia].max() <= 6.0
    np.testing.assert_array_equal(lvo.label[oligaemia], 0)
    np.testing.assert_array_equal(lvo.label[penumbra], 1)
    np.testing.assert_array_equal(lvo.label[core], 2)
    healthy_cbf = np.median(lvo.truth["cbf"][brain & (lvo.state == ph.HEALTHY)])
    assert np.median(lvo.truth["cbf"][core]) < 0.3 * healthy_cbf


def test_labels_follow_groups():
    wis = simulate_study("WIS", GRID, np.random.default_rng(1), noise_hu=0.0)
    non_lvo = simulate_study("Non-LVO", GRID, np.random.default_rng(1), noise_hu=0.0)
    lvo = simulate_study("LVO", GRID, np.random.default_rng(1), noise_hu=0.0)
    assert wis.label.max() == 0
    assert 0 < (non_lvo.label > 0).sum() < (lvo.label > 0).sum()
    with pytest.raises(ValueError, match="group"):
        simulate_study("ICH", GRID, np.random.default_rng(1))


def test_tissue_curves_follow_indicator_dilution(lvo):
    brain = (lvo.tissue == ph.GM) | (lvo.tissue == ph.WM)
    times = np.arange(lvo.ctp.shape[-1]) * lvo.frame_interval
    enhancement = lvo.ctp[brain] - lvo.ctp[brain][:, :1]
    early = lvo.truth["tmax"][brain] < 3  # curves that have (nearly) passed within the window
    auc = enhancement[early].sum(axis=1) * lvo.frame_interval
    expected = RHO / K_H * lvo.truth["cbv"][brain][early] / 100 * lvo.aif(times).sum() * lvo.frame_interval
    assert np.median(auc / expected) == pytest.approx(1.0, abs=0.05)


def test_noise_level_scales_with_voxel_size():
    study = simulate_study("WIS", GRID, np.random.default_rng(2), noise_hu=16.0)
    wm = study.tissue == ph.WM
    first_two = study.ctp[wm][:, :2]
    measured = np.std(first_two[:, 1] - first_two[:, 0]) / np.sqrt(2)
    assert measured == pytest.approx(voxel_noise_sigma(16.0, GRID), rel=0.2)
    assert voxel_noise_sigma(16.0, ph.Grid(size=512)) == pytest.approx(16.0)
    assert voxel_noise_sigma(16.0, ph.Grid(size=128)) == pytest.approx(4.0)


def test_group_counts_follow_the_paper():
    assert group_counts(152) == {"LVO": 77, "Non-LVO": 60, "WIS": 15}
    counts = group_counts(30)
    assert sum(counts.values()) == 30 and counts["LVO"] > counts["Non-LVO"] > counts["WIS"] >= 1
    with pytest.raises(ValueError):
        group_counts(2)


def test_split_is_stratified_disjoint_and_deterministic():
    ids = {g: [f"{g}{i}" for i in range(n)] for g, n in group_counts(30).items()}
    splits = split_patients(ids, seed=0)
    assert splits == split_patients(ids, seed=0)
    everyone = [i for s in splits.values() for i in s]
    assert sorted(everyone) == sorted(i for v in ids.values() for i in v)
    for split in ("validation", "test"):
        for group in ids:
            assert any(i.startswith(group) for i in splits[split]), (split, group)
    assert len(splits["training"]) > len(splits["test"]) >= len(splits["validation"])


def test_nihss_rises_with_hypoperfused_volume_within_group_ranges():
    rng = np.random.default_rng(0)
    small = [draw_nihss("LVO", 0.02, rng) for _ in range(50)]
    large = [draw_nihss("LVO", 0.2, rng) for _ in range(50)]
    assert np.mean(large) > np.mean(small) + 5
    assert 8 <= min(small) and max(large) <= 23
    non_lvo = [draw_nihss("Non-LVO", 0.01, rng) for _ in range(50)]
    assert 0 <= min(non_lvo) and max(non_lvo) <= 11
    assert all(0 <= draw_nihss("WIS", 0.0, rng) <= 4 for _ in range(20))


def test_tiny_groups_still_fill_validation_and_test():
    splits = split_patients({"LVO": ["a", "b"], "Non-LVO": ["c"], "WIS": ["d"]}, seed=1)
    assert all(len(splits[s]) == 1 for s in ("validation", "test")) and len(splits["training"]) == 2

import pytest
import torch
from monai.bundle import ConfigParser
from workflows import ROOT

from scripts.learning.model.map_dropout import RandMapDropoutd
from scripts.learning.model.networks import input_set

MAPS = ["cbf", "cbv", "ttp", "tmax"]


def slice_sample(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    brain = torch.zeros(1, 16, 16)
    brain[0, 3:13, 4:12] = 1
    return {"image": torch.rand(4, 16, 16, generator=generator), "brain": brain}


def test_a_dropped_map_is_its_brain_median_inside_the_brain_and_nothing_else_changes():
    data = slice_sample()
    original = data["image"].clone()
    out = RandMapDropoutd("image", maps=["cbv"], channels=MAPS, prob=1.0)(data)
    inside = data["brain"][0] > 0
    flat = out["image"][1][inside]
    assert torch.all(flat == original[1][inside].median())
    assert torch.equal(out["image"][1][~inside], original[1][~inside])  # outside the brain as it was
    assert torch.equal(out["image"][[0, 2, 3]], original[[0, 2, 3]])  # the other maps as they were
    assert torch.equal(data["image"], original)  # the input sample is not changed in place


def test_map_dropout_draws_its_maps_at_the_rate_asked_and_never_another():
    transform = RandMapDropoutd("image", maps=["cbf", "cbv"], channels=MAPS, prob=0.5)
    transform.set_random_state(seed=0)
    dropped = []
    for i in range(400):
        data = slice_sample(i)
        out = transform(data)["image"]
        changed = [MAPS[c] for c in range(4) if not torch.equal(out[c], data["image"][c])]
        assert len(changed) <= 1
        dropped += changed
    assert 160 <= len(dropped) <= 240  # about half the slices
    assert set(dropped) == {"cbf", "cbv"} and 60 <= dropped.count("cbf") <= 140


@pytest.mark.parametrize("kwargs", [{"maps": ["cbv"], "prob": 0.0}, {"maps": ["mip"], "prob": 1.0}, {"maps": []}])
def test_map_dropout_off_or_without_its_maps_leaves_the_sample_alone(kwargs):
    data = slice_sample()
    out = RandMapDropoutd("image", channels=MAPS, **kwargs)(data)
    assert torch.equal(out["image"], data["image"])


def test_training_drops_cbv_in_training_slices_only():
    """train.json's default: CBV flattened in half the training slices (the network must read core in CBF too,
    ``benchmarks/input_ablation.py``); validation and inference see every map."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    augmentation = [t for t in parser.get_parsed_content("train#augmentation") if isinstance(t, RandMapDropoutd)]
    assert len(augmentation) == 1 and augmentation[0].prob == 0.5
    assert augmentation[0].indices == [list(input_set(parser["inputs"])[0]).index("cbv")]
    validation = parser.get_parsed_content("validate#transforms").transforms
    assert not any(isinstance(t, RandMapDropoutd) for t in validation)

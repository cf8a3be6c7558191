import re
import urllib.error
from pathlib import Path

import pytest
import torch

from scripts.io.map_registry import display_windows
from scripts.learning.model import vgg
from scripts.learning.model.encoding import IMAGENET_MEAN, IMAGENET_STD, PerfusionColourEncoding
from scripts.learning.model.networks import INPUT_SETS, VARIANTS, create_network, input_set, trainable_parameters
from scripts.learning.model.vgg import InflatedVGG16Encoder, VGG16Encoder

SIZE = 64


def inputs_for(inputs: str, batch: int = 1, size: int = SIZE):
    maps, use_nihss = input_set(inputs)
    torch.manual_seed(1)
    image = torch.rand(batch, len(maps), size, size) * torch.tensor([60.0, 5.0, 30.0, 10.0, 100.0][: len(maps)]).view(
        1, -1, 1, 1
    )
    nihss = torch.arange(batch, dtype=torch.float32).view(batch, 1) * 7 + 3 if use_nihss else None
    return image, nihss


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("inputs", list(INPUT_SETS))
def test_every_variant_and_input_set_gives_three_class_logits(variant, inputs):
    net = create_network(variant, inputs).eval()
    image, nihss = inputs_for(inputs, batch=2)
    with torch.no_grad():
        out = net(image, nihss)
    assert out.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_sizes_not_divisible_by_32_name_the_padding():
    net = create_network("EF", "PMs").eval()
    with pytest.raises(ValueError, match="100 x 70 is not divisible by 32; pad it to 128 x 96"):
        net(torch.zeros(1, 4, 100, 70))
    with pytest.raises(ValueError, match="channels cbf, cbv, ttp, tmax"):
        net(torch.zeros(1, 5, 64, 64))
    with pytest.raises(ValueError, match="takes NIHSS"):
        create_network("EF", "PMs+N")(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="variant must be one of SF, EF, EFI"):
        create_network("UNet")


def test_nihss_changes_the_output():
    net = create_network("SF", "PMs+N").eval()
    image, _ = inputs_for("PMs+N")
    with torch.no_grad():
        low, high = net(image, torch.tensor([[2.0]])), net(image, torch.tensor([[20.0]]))
    assert (low - high).abs().max() > 1e-6


def vgg_parameter_ids(net) -> dict[str, set[int]]:
    groups = {"deep": set(), "shallow": set()}
    for encoder in net.encoders:
        deep = {id(p) for p in encoder.deep_half()}
        groups["deep"] |= deep
        groups["shallow"] |= {id(p) for p in encoder.parameters()} - deep
    return groups


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("stage, trains", [("frozen", ()), ("half", ("deep",)), ("all", ("deep", "shallow"))])
def test_gradients_reach_exactly_the_stage_parameters(variant, stage, trains):
    net = create_network(variant, "PMs+N")
    net.set_finetuning(stage)
    image, nihss = inputs_for("PMs+N", batch=2)
    net(image, nihss).square().mean().backward()
    groups = vgg_parameter_ids(net)
    vgg_ids = groups["deep"] | groups["shallow"]
    expected = set().union(*(groups[g] for g in trains)) if trains else set()
    got = {id(p) for p in net.parameters() if id(p) in vgg_ids and p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected
    others = [p for p in net.parameters() if id(p) not in vgg_ids]
    assert all(p.grad is not None for p in others)  # decoder, heads, NIHSS branch always train
    assert {id(p) for p in trainable_parameters(net)} == expected | {id(p) for p in others}
    assert len(groups["deep"]) == 12 * len(net.encoders)  # blocks 4-5: 6 convs x (weight, bias)
    with pytest.raises(ValueError, match="stage"):
        net.set_finetuning("thaw")


def torchvision_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A torchvision-keyed vgg16 state dict (features + classifier), random values."""
    torch.manual_seed(seed)
    state = {f"features.{k}": torch.randn_like(v) for k, v in vgg.vgg16_layers().state_dict().items()}
    state.update({"classifier.0.weight": torch.randn(8, 4), "classifier.0.bias": torch.randn(8)})
    return state


def test_torchvision_state_dict_loads_unchanged_and_changes_the_output(tmp_path):
    path = tmp_path / "vgg16.pth"
    state = torchvision_state()
    torch.save(state, path)
    torch.manual_seed(0)
    scratch = create_network("SF", "PMs", pretrained=False).eval()
    torch.manual_seed(0)
    loaded = create_network("SF", "PMs", pretrained=str(path)).eval()
    assert loaded.pretrained and not scratch.pretrained
    for encoder in loaded.encoders:
        for key, value in encoder.features.state_dict().items():
            torch.testing.assert_close(value, state[f"features.{key}"])
    image, _ = inputs_for("PMs")
    with torch.no_grad():
        assert (loaded(image) - scratch(image)).abs().max() > 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encoder_width_keeps_the_topology_and_starts_from_the_first_imagenet_filters(variant, tmp_path):
    """A quarter-width network has the same layers (13 convolutions, 5 pools, 5 skips per encoder) with a quarter
    of the filters, gives the same output shape, and each encoder holds the leading filters and input channels
    of the ImageNet kernels; width 1 is the paper's network; widths outside (0, 1] are refused."""
    path = tmp_path / "vgg16.pth"
    state = torchvision_state()
    torch.save(state, path)
    full = create_network(variant, "PMs+N", pretrained=str(path))
    quarter = create_network(variant, "PMs+N", pretrained=str(path), encoder_width=0.25)
    convs = [m for m in quarter.encoders[0].features if isinstance(m, (torch.nn.Conv2d, vgg.InflatedConv3d))]
    assert len(convs) == 13 and len(quarter.encoders[0].features) == len(full.encoders[0].features)
    assert [c.weight.shape[0] for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    params = sum(p.numel() for p in quarter.parameters()) / sum(p.numel() for p in full.parameters())
    assert 0.04 < params < 0.1, params  # about width squared
    if variant != "EFI":  # the inflated kernels are 3D copies of these
        encoder = quarter.encoders[0].features
        torch.testing.assert_close(encoder[0].weight, state["features.0.weight"][:16])
        torch.testing.assert_close(encoder[2].weight, state["features.2.weight"][:16, :16])
        torch.testing.assert_close(encoder[28].bias, state["features.28.bias"][:128])
    image, nihss = inputs_for("PMs+N", batch=2)
    with torch.no_grad():
        assert quarter.eval()(image, nihss).shape == full.eval()(image, nihss).shape == (2, 3, SIZE, SIZE)
    for bad in (0, 1.5, "wide"):
        with pytest.raises(ValueError, match="encoder_width must be in \\(0, 1\\]"):
            create_network(variant, "PMs", encoder_width=bad)


def test_download_is_real_and_offline_falls_back_with_a_warning(monkeypatch, tmp_path):
    calls = []

    def offline(url, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.warns(UserWarning, match="could not be downloaded"):
        encoder = VGG16Encoder(pretrained=True)
    assert calls == [vgg.VGG16_URL] and not encoder.pretrained
    with pytest.warns(UserWarning, match="could not be downloaded"):
        net = create_network("SF", "PMs", pretrained=True)
    assert len(calls) == 2 and not net.pretrained  # one download attempt for all four encoders
    state = torchvision_state()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: state)
    encoder = VGG16Encoder(pretrained=True)
    assert encoder.pretrained
    torch.testing.assert_close(encoder.features[0].weight, state["features.0.weight"])
    with pytest.raises(ValueError, match="missing.pth: VGG-16 weights file not found"):
        VGG16Encoder(pretrained=str(tmp_path / "missing.pth"))
    torch.save({"classifier.0.weight": torch.zeros(2)}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match="head.pth: not a torchvision vgg16 state dict"):
        VGG16Encoder(pretrained=str(tmp_path / "head.pth"))


@pytest.mark.parametrize("depth", [4, 5])
def test_inflated_encoder_on_a_depth_constant_input_reproduces_the_2d_features(depth):
    torch.manual_seed(3)
    flat = VGG16Encoder().eval()
    torch.manual_seed(3)
    inflated = InflatedVGG16Encoder().eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        skips2d, bottom2d = flat(image)
        skips3d, bottom3d = inflated(image.unsqueeze(2).repeat(1, 1, depth, 1, 1))
    depths = InflatedVGG16Encoder.depths(depth)
    for s2, s3, d in zip([*skips2d, bottom2d], [*skips3d, bottom3d], depths):
        unfolded = s3.unflatten(1, (s2.shape[1], d))
        for k in range(d):
            torch.testing.assert_close(unfolded[:, :, k], s2, rtol=1e-4, atol=1e-4)


def test_inflated_convolution_equals_conv3d_and_never_calls_it(monkeypatch):
    """The 3x3x3 convolution as three depth-shifted 2D ones: F.conv3d's output and gradients, without F.conv3d
    (oneDNN's bf16 conv3d crashes in backward on AMX CPUs), also under bf16 autocast."""
    torch.manual_seed(0)
    conv = vgg.InflatedConv3d(torch.nn.Conv2d(5, 6, 3, padding=1))
    conv.weight.data += 0.1 * torch.randn_like(conv.weight)  # depth-varying kernels, not only inflated ones
    x = torch.randn(2, 5, 4, 16, 12, requires_grad=True)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate")
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, padding=(0, 1, 1))
    grads_expected = torch.autograd.grad(expected.square().sum(), (x, conv.weight, conv.bias))

    def refuse(*args, **kwargs):
        raise AssertionError("F.conv3d called")

    monkeypatch.setattr(torch.nn.functional, "conv3d", refuse)
    out = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out.square().sum(), (x, conv.weight, conv.bias)), grads_expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, rtol=0.05, atol=0.05)
    low.float().sum().backward()


@pytest.mark.parametrize("inputs", ["PMs", "PMs+N"])
def test_torchscript_export_matches_eager(tmp_path, inputs):
    net = create_network("SF", inputs).eval()
    image, nihss = inputs_for(inputs)
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, tmp_path / "model.ts")
    reloaded = torch.jit.load(tmp_path / "model.ts")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image, nihss), net(image, nihss))


def test_monai_verify_net_in_out_passes_on_the_bundle_network():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file="bundle/configs/metadata.json",
        config_file="bundle/configs/network.json",
        n=1,
        any=32,
        extra_forward_args={"nihss": torch.tensor([[10.0]])},
    )


def test_colour_encoding_windows_and_luts():
    maps = torch.tensor([[0.0, 80.0, 40.0]]).view(1, 3, 1, 1).expand(1, 3, 1, 1)
    jet = PerfusionColourEncoding(["cbf", "cbf", "cbf"], windows={"cbf": (0, 80)})(maps.view(1, 3, 1, 1))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    rgb = jet[0, :, :, 0, 0] * std + mean
    torch.testing.assert_close(rgb[0], torch.tensor([0.0, 0.0, 0.5]))  # low end: dark blue
    torch.testing.assert_close(rgb[1], torch.tensor([0.5, 0.0, 0.0]))  # high end: dark red
    torch.testing.assert_close(rgb[2], torch.tensor([0.5, 1.0, 0.5]))  # middle: green
    gray = PerfusionColourEncoding(["tmax"], lut="gray")(torch.full((1, 1, 1, 1), 6.0))
    torch.testing.assert_close(gray[0, 0, :, 0, 0] * std + mean, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="no display window for map"):
        PerfusionColourEncoding(["adc"])
    with pytest.raises(ValueError, match="high > low"):
        PerfusionColourEncoding(["cbf"], windows={"cbf": (10, 5)})


def test_a_checkpoint_brings_its_colour_windows(caplog):
    x = torch.tensor([20.0, 6.0]).view(1, 2, 1, 1)
    trained = PerfusionColourEncoding(["cbf", "tmax"], windows={"cbf": (0, 40)})
    configured = PerfusionColourEncoding(["cbf", "tmax"], windows={"cbf": (0, 80)})
    assert not torch.equal(trained(x), configured(x))
    with caplog.at_level("WARNING"):
        configured.load_state_dict(trained.state_dict())
    torch.testing.assert_close(configured(x), trained(x))
    assert configured.windows()["cbf"] == (0.0, 40.0) and "replace the configured" in caplog.text
    # a whole network's checkpoint from before 0.13.0 holds no windows: it is read with that version's CBF 0-80
    net = create_network("SF", "PMs")
    old = {k: v for k, v in create_network("SF", "PMs").state_dict().items() if not k.startswith("encoding.")}
    assert len(old) == len(net.state_dict()) - 2
    net.load_state_dict(old)  # strict: the windows are filled in, not missing
    assert net.encoding.windows()["cbf"] == (0.0, 80.0)
    assert net.encoding.windows()["tmax"] == tuple(map(float, display_windows()["tmax"]))
    # one trained then with a window override is read with the override passed again
    net = create_network("SF", "PMs", windows={"cbf": (0, 40)})
    net.load_state_dict(old)
    assert net.encoding.windows()["cbf"] == (0.0, 40.0)


def test_a_tiny_batch_is_overfit():
    torch.manual_seed(0)
    net = create_network("SF", "PMs+N")
    image, nihss = inputs_for("PMs+N", batch=2)
    target = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    target[:, 16:40, 10:30] = 1
    target[:, 24:32, 16:24] = 2
    optimizer = torch.optim.Adam(trainable_parameters(net), lr=1e-4)
    losses = []
    for _ in range(25):  # 20 reach 0.25 of the first loss on this machine
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(image, nihss), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_input_map_changes_the_output(variant):
    """A network that dropped a map, or fed one map to every encoder, would not react to that map alone."""
    net = create_network(variant, "PMs+M").eval()
    image, _ = inputs_for("PMs+M")
    with torch.no_grad():
        base = net(image)
        for channel, name in enumerate(net.maps):
            changed = image.clone()
            changed[:, channel] = changed[:, channel].flip(-1)  # same values, another layout
            assert (net(changed) - base).abs().max() > 1e-5, name


def test_slow_fusion_gives_each_map_its_encoder_and_every_skip_reaches_the_decoder():
    """SF: changing map i moves encoder i's features and no other's; zeroing one encoder's features at one
    level (each of the five skips and the bottleneck) changes the logits."""
    net = create_network("SF", "PMs").eval()
    image, _ = inputs_for("PMs")
    features: dict[int, tuple] = {}
    hooks = [
        enc.register_forward_hook(lambda m, i, out, k=k: features.__setitem__(k, out))
        for k, enc in enumerate(net.encoders)
    ]
    with torch.no_grad():
        base = net(image)
        reference = dict(features)
        for channel in range(len(net.maps)):
            changed = image.clone()
            changed[:, channel] = changed[:, channel].flip(-1)
            net(changed)
            moved = [k for k in features if not torch.equal(features[k][1], reference[k][1])]
            assert moved == [channel], net.maps[channel]
    for hook in hooks:
        hook.remove()

    def zero_level(level: int):
        def hook(module, inputs, out):
            skips, bottom = list(out[0]), out[1]
            if level == len(skips):
                return skips, torch.zeros_like(bottom)
            skips[level] = torch.zeros_like(skips[level])
            return skips, bottom

        return hook

    with torch.no_grad():
        for k, encoder in enumerate(net.encoders):
            for level in range(6):  # skips at strides 1, 2, 4, 8, 16, then the bottleneck
                hook = encoder.register_forward_hook(zero_level(level))
                assert (net(image) - base).abs().max() > 1e-6, (net.maps[k], level)
                hook.remove()


def test_parameter_counts_match_the_model_card():
    """The model card's table ``| SF | PMs+N | 85,296,219 | 58,858,752 |`` is what the code builds."""
    card = (Path(__file__).resolve().parents[1] / "bundle" / "docs" / "README.md").read_text()
    rows = re.findall(r"^\| (SF|EF|EFI) \| (PMs[+MN]*) \| ([\d,]+) \| ([\d,]+) \|$", card, flags=re.M)
    assert len(rows) == 9
    for variant, inputs, total, encoders in rows:
        net = create_network(variant, inputs)
        assert sum(p.numel() for p in net.parameters()) == int(total.replace(",", "")), (variant, inputs)
        assert sum(p.numel() for e in net.encoders for p in e.parameters()) == int(encoders.replace(",", "")), (
            variant,
            inputs,
        )

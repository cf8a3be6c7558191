import numpy as np
import pytest
import torch

from scripts.learning.model.losses import FocalTverskyLoss

# one row of 10 pixels: truth has 4 penumbra pixels; A misses 2 of them, B adds 2 false alarms
TRUTH = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
MISSES = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
FALSE_ALARMS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 3).T.float().view(1, 3, 1, -1)


def target(labels: torch.Tensor) -> torch.Tensor:
    return labels.view(1, 1, 1, -1)


def plain(**kwargs) -> FocalTverskyLoss:
    return FocalTverskyLoss(softmax=False, sample_weighting="none", **kwargs)


def test_image_form_matches_hand_computed_values_and_alpha_penalises_misses():
    loss = plain()
    # weights (0.1, 50, 440); misses: TI = (0.1*6 + 50*2) / (0.1*(6 + 0.3*2) + 50*(2 + 0.7*2))
    ti_miss = 100.6 / (0.1 * 6.6 + 50 * 3.4)
    ti_alarm = 200.4 / (0.1 * (4 + 0.7 * 2) + 50 * (4 + 0.3 * 2))
    assert loss(onehot(MISSES), target(TRUTH)).item() == pytest.approx((1 - ti_miss) ** 0.75, rel=1e-5)
    assert loss(onehot(FALSE_ALARMS), target(TRUTH)).item() == pytest.approx((1 - ti_alarm) ** 0.75, rel=1e-5)
    assert loss(onehot(MISSES), target(TRUTH)) > loss(onehot(FALSE_ALARMS), target(TRUTH))
    swapped = plain(alpha=0.3, beta=0.7)  # now false positives weigh more
    assert swapped(onehot(MISSES), target(TRUTH)) < swapped(onehot(FALSE_ALARMS), target(TRUTH))


def test_class_form_matches_hand_computed_values():
    loss = plain(form="class", class_weights=(1.0, 2.0, 3.0))
    ti = [(6 + 1) / (6 + 0.3 * 2 + 1), (2 + 1) / (2 + 0.7 * 2 + 1), 1.0]  # core absent from both: TI = 1
    expected = sum(w * (1 - t) ** 0.75 for w, t in zip((1.0, 2.0, 3.0), ti)) / 6.0
    assert loss(onehot(MISSES), target(TRUTH)).item() == pytest.approx(expected, abs=1e-5)  # (1 - TI) >= 1e-7


def test_perfect_prediction_gives_zero_and_class_weights_matter():
    assert FocalTverskyLoss(softmax=False)(onehot(TRUTH), target(TRUTH)).item() == pytest.approx(0.0, abs=1e-3)
    light = plain(class_weights=(1.0, 1.0, 1.0))(onehot(MISSES), target(TRUTH))
    heavy = plain()(onehot(MISSES), target(TRUTH))
    assert heavy > light  # penumbra weighted 500x healthy: the misses dominate the index


def test_non_lvo_factor_only_affects_non_lvo_samples():
    loss = FocalTverskyLoss(softmax=False, reduction="none")
    preds, truth = onehot(MISSES).repeat(2, 1, 1, 1), target(TRUTH).repeat(2, 1, 1, 1)
    base = loss(preds, truth)
    boosted = loss(preds, truth, non_lvo=torch.tensor([False, True]))
    assert boosted[0].item() == pytest.approx(base[0].item())
    # sample weight = mean pixel class weight: (6*0.1 + 4*50)/10, Non-LVO (6*0.1 + 4*300)/10
    assert (boosted[1] / base[1]).item() == pytest.approx((0.6 + 1200) / (0.6 + 200), rel=1e-5)
    direct = FocalTverskyLoss(softmax=False, sample_weighting="none", reduction="none")
    ratio = direct(preds, truth, non_lvo=torch.tensor([False, True])) / direct(preds, truth)
    torch.testing.assert_close(ratio, torch.tensor([1.0, 6.0]))
    weighted = loss(preds, truth, sample_weight=torch.tensor([1.0, 0.5]))
    assert weighted[1].item() == pytest.approx(0.5 * base[1].item())


def test_logits_give_the_same_loss_as_probabilities_and_useful_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 4, 5))
    from_logits = FocalTverskyLoss()(logits, labels)
    from_probs = FocalTverskyLoss(softmax=False)(torch.softmax(logits, 1), labels)
    assert from_logits.item() == pytest.approx(from_probs.item(), rel=1e-5)
    from_logits.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    true_class = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).bool()
    assert grad[true_class].mean() < 0 < grad[~true_class].mean()  # raising the true logit lowers the loss


def test_bad_configuration_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="gamma"):
        FocalTverskyLoss(gamma=0)
    with pytest.raises(ValueError, match="form"):
        FocalTverskyLoss(form="pixel")
    with pytest.raises(ValueError, match="2 channels but 3 class weights"):
        FocalTverskyLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))


def test_default_training_loss_does_not_reward_whole_brain_penumbra():
    """The seed-0 collapse of the former default: with class weights (0.1, 50, 440) in the class form, labelling
    the whole brain penumbra (the true core kept) cost 5 % of missing the lesion, and penumbra over a
    lesion-free slice 0.03 %: a plateau next to the optimum. The default weights make both cost a third or more."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config("bundle/configs/train.json")
    loss = FocalTverskyLoss(
        class_weights=parser.get_parsed_content("class_weights"),
        form=parser["loss_form"],
        alpha=parser["alpha"],
        beta=parser["beta"],
        gamma=parser["gamma"],
    )
    yy, xx = np.mgrid[:64, :64]
    brain = (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2
    label = np.where(brain & (xx > 36), 1, 0) + np.where(brain & (xx > 50), 1, 0)  # penumbra with a core inside

    def cost(pred: np.ndarray, target: np.ndarray) -> float:
        logits = torch.full((1, 3, 64, 64), -10.0).scatter_(1, torch.as_tensor(pred)[None, None].long(), 10.0)
        return float(loss(logits, torch.as_tensor(target)[None, None]))

    whole = np.where(label == 2, 2, np.where(brain, 1, 0))
    missed, healthy = np.zeros_like(label), np.zeros_like(label)

    def relative_costs() -> tuple[float, float]:
        """Whole-brain penumbra on a lesion slice, and penumbra on a lesion-free slice, over missing the lesion."""
        return cost(whole, label) / cost(missed, label), cost(np.where(brain, 1, 0), healthy) / cost(missed, label)

    assert cost(label, label) < 0.01
    assert min(relative_costs()) > 0.3
    loss = FocalTverskyLoss(class_weights=(0.1, 50.0, 440.0), form="class")  # the former default: a plateau
    assert relative_costs()[0] < 0.1 and relative_costs()[1] < 0.01


def test_batch_index_counts_false_alarms_against_the_batch():
    """batch=True: a lesion-free image's few false voxels cost in proportion to the batch's lesion, not as
    much as missing a whole lesion (the per-image index of an absent class is s / (beta FP + s))."""
    lesion = torch.zeros(1, 1, 1, 100, dtype=torch.long)
    lesion[..., :40] = 1
    clean = torch.zeros(1, 1, 1, 100, dtype=torch.long)
    target = torch.cat([lesion, clean])
    pred = torch.cat([lesion, clean])
    pred[1, ..., :5] = 1  # five false penumbra voxels on the lesion-free image
    logits = torch.full((2, 3, 1, 100), -10.0).scatter_(1, pred, 10.0)
    kwargs = dict(class_weights=(1.0, 1.0, 1.0), form="class", sample_weighting="none")
    per_image = FocalTverskyLoss(**kwargs)(logits, target)
    batch = FocalTverskyLoss(batch=True, **kwargs)(logits, target)
    missed = FocalTverskyLoss(batch=True, **kwargs)(
        torch.full((2, 3, 1, 100), -10.0).scatter_(1, torch.zeros_like(target), 10.0), target
    )
    assert batch < 0.5 * per_image and batch < 0.2 * missed
    # the same counts as one image holding both halves: the batch index is the pooled index
    pooled = FocalTverskyLoss(**kwargs)(
        logits.permute(1, 2, 0, 3).reshape(1, 3, 1, 200), target.permute(1, 2, 0, 3).reshape(1, 1, 1, 200)
    )
    assert float(batch) == pytest.approx(float(pooled), rel=1e-5)
    with pytest.raises(ValueError, match="batch=True needs form='class'"):
        FocalTverskyLoss(batch=True, form="image")


def test_cross_entropy_term_keeps_a_gradient_where_the_tversky_index_has_saturated():
    """The empty-prediction trap of 2D training from random encoders: once the lesion logits sit far below the
    healthy one everywhere, the Tversky index's gradient on a missed lesion pixel vanishes (p (1 - p) ~ 0);
    the added cross-entropy keeps it near -1 / pixels. Its value is torch's cross-entropy."""
    label = target(TRUTH)
    logits = torch.zeros(1, 3, 1, 10)
    logits[:, 0] = 12.0  # "healthy" everywhere, lesion probabilities ~ 6e-6
    kwargs = dict(class_weights=(1.0, 1.0, 1.0), form="class", batch=True, sample_weighting="none")

    def lesion_pixel_grad(ce_weight: float) -> float:
        x = logits.clone().requires_grad_(True)
        FocalTverskyLoss(ce_weight=ce_weight, **kwargs)(x, label).backward()
        return float(x.grad[0, 1, 0, TRUTH == 1].mean())

    assert abs(lesion_pixel_grad(0.0)) < 1e-4
    assert lesion_pixel_grad(1.0) < -0.09  # ~ -(1 - p) / 10 pixels
    tversky = FocalTverskyLoss(**kwargs)(logits, label)
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0])
    assert float(FocalTverskyLoss(ce_weight=0.5, **kwargs)(logits, label)) == pytest.approx(
        float(tversky + 0.5 * ce), rel=1e-5
    )
    per_image = FocalTverskyLoss(ce_weight=0.5, form="class", sample_weighting="none")(logits, label)
    assert float(per_image) == pytest.approx(
        float(FocalTverskyLoss(form="class", sample_weighting="none")(logits, label) + 0.5 * ce), rel=1e-5
    )
    with pytest.raises(ValueError, match="ce_weight"):
        FocalTverskyLoss(ce_weight=-1.0)


def test_soft_predictions_match_monai_tversky_and_an_independent_formula():
    """Soft probabilities, where a wrong soft-count formula would show: the class form with gamma 1 is MONAI's
    TverskyLoss with alpha and beta swapped (per image and over the batch); the image form and the focal
    exponent match a NumPy transcription of the original Keras code."""
    from monai.losses import TverskyLoss

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 3, 6, 7, generator=generator) * 2
    labels = torch.randint(0, 3, (3, 1, 6, 7), generator=generator)
    for batch in (False, True):
        ours = FocalTverskyLoss(
            gamma=1.0,
            alpha=0.7,
            beta=0.3,
            class_weights=(1.0, 1.0, 1.0),
            form="class",
            sample_weighting="none",
            smooth=1.0,
            batch=batch,
        )(logits, labels)
        monai = TverskyLoss(
            alpha=0.3, beta=0.7, softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0, batch=batch
        )(logits, labels)
        assert float(ours) == pytest.approx(float(monai), rel=1e-5), batch

    p = torch.softmax(logits, 1).numpy().astype(np.float64)
    y = np.eye(3)[labels[:, 0].numpy()].transpose(0, 3, 1, 2)
    w = np.array([0.1, 50.0, 440.0]).reshape(1, 3, 1, 1)
    expected = []
    for i in range(3):  # Keras: K.sum over pixels and classes of the class-weighted counts, per image
        tp = (w * y * p)[i].sum()
        fn = (w * y * (1 - p))[i].sum()
        fp = (w * (1 - y) * p)[i].sum()
        expected.append((1 - tp / (tp + 0.7 * fn + 0.3 * fp + 1e-7)) ** 0.75)
    ours = FocalTverskyLoss(form="image", sample_weighting="none", reduction="none")(logits, labels)
    assert ours.numpy() == pytest.approx(np.array(expected), rel=1e-5)

"""Focal Tversky loss with class weights, per-sample weights and the Non-LVO penalty of the original code."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

DEFAULT_CLASS_WEIGHTS = (0.1, 50.0, 440.0)
"""healthy, penumbra, core: the original code's ``HOT_ONE_WEIGHTS`` for three classes."""


class FocalTverskyLoss(_Loss):
    """Focal Tversky loss (Abraham & Khan, ISBI 2019) as used by Tomasetti et al. (NLDL 2022).

    ``TI = TP / (TP + alpha * FN + beta * FP)`` with soft counts ``TP = sum y p``, ``FN = sum y (1 - p)``,
    ``FP = sum (1 - y) p``, and ``loss = (1 - TI) ** (1 / gamma)``. **alpha weighs false negatives** (misses)
    and beta false positives; MONAI's ``TverskyLoss`` uses the opposite names. Defaults gamma = 4/3,
    alpha = 0.7, beta = 0.3 (the paper's choice).

    ``form="image"`` (the original code): one TI per image with class weights ``w_c`` inside every sum,
    pooled over pixels and classes, ``TI = sum_c,x w_c y p / sum_c,x w_c (y p + alpha y (1-p) + beta (1-y) p)``.
    ``form="class"``: one TI per class and image, ``TI_c = (TP_c + s) / (TP_c + alpha FN_c + beta FP_c + s)``
    with smoothing ``s`` (so a class absent from both costs nothing), loss = ``sum_c w_c (1 - TI_c)^(1/gamma) /
    sum_c w_c``.

    ``batch=True`` (class form only) sums each class's soft counts over the whole batch before the index,
    as nnU-Net's batch Dice does for 2D training: a lesion-free slice's false alarms then count against the
    batch's lesion voxels, instead of costing as much as missing a whole lesion (the per-image index of an
    absent class is ``s / (beta FP + s)``, about 0 for a handful of false voxels), which drives 2D training
    towards empty predictions. Per-sample weights then weigh each image's counts.

    ``ce_weight`` > 0 adds that multiple of the cross-entropy (mean over pixels, per image; the same per-sample
    weights), as nnU-Net adds CE to its Dice loss. The Tversky index alone saturates: once the softmax has
    pushed a lesion class near 0 everywhere (which the healthy class's index rewards early in training from
    random encoders), its gradient ``p (1 - p) dTI/dp`` vanishes and the run stays empty; the cross-entropy's
    logit gradient ``p - y`` does not vanish on missed lesion pixels. 0 (the paper's loss) by default.

    Per-sample weights multiply each image's loss before the batch mean (Keras ``sample_weight``
    semantics). With ``sample_weighting="label"`` (the original code) an image's weight is the mean class
    weight of its label's pixels; for Non-LVO images (``non_lvo`` true, given in training only) the
    penumbra and core weights in that mean are multiplied by ``non_lvo_factor`` (default 6); with
    ``sample_weighting="none"`` a Non-LVO image's loss is multiplied by the factor directly. An explicit
    ``sample_weight`` multiplies on top.

    Args:
        gamma, alpha, beta: focal exponent and Tversky weights.
        class_weights: one weight per class (healthy, penumbra, core).
        form: ``"image"`` or ``"class"``.
        sample_weighting: ``"label"`` or ``"none"``.
        non_lvo_factor: multiplier of the lesion-class weights of Non-LVO samples.
        softmax: apply a softmax to ``input`` (logits); False if ``input`` already holds probabilities.
        to_onehot_y: ``target`` holds class indices ``(B, 1, ...)`` to one-hot encode.
        reduction: ``"mean"`` (sum of weighted losses / batch size), ``"sum"`` or ``"none"``.
        epsilon: added to the image-form denominator (the original's ``K.epsilon()``).
        smooth: added to numerator and denominator of each class's TI in the class form.
        batch: class form: one TI per class over the whole batch (see above) instead of per image.
        ce_weight: weight of the added cross-entropy term (0: none).
    """

    def __init__(
        self,
        gamma: float = 4.0 / 3.0,
        alpha: float = 0.7,
        beta: float = 0.3,
        class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS,
        form: str = "image",
        sample_weighting: str = "label",
        non_lvo_factor: float = 6.0,
        softmax: bool = True,
        to_onehot_y: bool = True,
        reduction: str = "mean",
        epsilon: float = 1e-7,
        smooth: float = 1.0,
        batch: bool = False,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__(reduction=reduction)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}.")
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise ValueError(f"alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}.")
        if form not in ("image", "class"):
            raise ValueError(f"form must be 'image' or 'class', got {form!r}.")
        if sample_weighting not in ("label", "none"):
            raise ValueError(f"sample_weighting must be 'label' or 'none', got {sample_weighting!r}.")
        if batch and form != "class":
            raise ValueError("batch=True needs form='class' (the image form is one index per image by definition).")
        if ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self.gamma, self.alpha, self.beta = float(gamma), float(alpha), float(beta)
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32), persistent=False)
        self.form, self.sample_weighting = form, sample_weighting
        self.non_lvo_factor = float(non_lvo_factor)
        self.softmax, self.to_onehot_y, self.epsilon, self.smooth = softmax, to_onehot_y, float(epsilon), float(smooth)
        self.batch, self.ce_weight = bool(batch), float(ce_weight)
        self.batch_non_lvo: torch.Tensor | None = (
            None  # set per training batch by scripts.learning.engine.training.NonLVOPenalty
        )

    def label_sample_weights(self, onehot: torch.Tensor, non_lvo: torch.Tensor | None) -> torch.Tensor:
        """Mean class weight of each image's label pixels (lesion weights x factor for Non-LVO images)."""
        weights = self.class_weights.to(onehot).expand(onehot.shape[0], -1).clone()
        if non_lvo is not None:
            boost = torch.where(non_lvo.reshape(-1).bool(), self.non_lvo_factor, 1.0).to(onehot)
            weights[:, 1:] = weights[:, 1:] * boost[:, None]
        per_pixel = (onehot * weights.view(*weights.shape, *([1] * (onehot.dim() - 2)))).sum(dim=1)
        return per_pixel.flatten(1).mean(dim=1)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        non_lvo: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input`` (B, C, ...) logits or probabilities; ``target`` (B, 1, ...) indices or (B, C, ...) one-hot."""
        if non_lvo is None:
            non_lvo = self.batch_non_lvo
        n_classes = input.shape[1]
        if n_classes != self.class_weights.numel():
            raise ValueError(f"input has {n_classes} channels but {self.class_weights.numel()} class weights are set.")
        probs = torch.softmax(input, dim=1) if self.softmax else input
        if self.to_onehot_y:
            if target.shape[1] != 1:
                raise ValueError(f"to_onehot_y expects target (B, 1, ...), got {tuple(target.shape)}.")
            onehot = F.one_hot(target[:, 0].long(), n_classes).movedim(-1, 1).to(probs)
        else:
            onehot = target.to(probs)
        if onehot.shape != probs.shape:
            raise ValueError(f"target {tuple(onehot.shape)} does not match input {tuple(probs.shape)}.")
        dims = tuple(range(2, probs.dim()))
        ce = 0.0
        if self.ce_weight > 0:
            log_probs = torch.log_softmax(input, dim=1) if self.softmax else torch.log(input.clamp_min(self.epsilon))
            ce = self.ce_weight * -(onehot * log_probs).sum(1).flatten(1).mean(1)
        tp = (onehot * probs).sum(dims)
        fn = (onehot * (1 - probs)).sum(dims)
        fp = ((1 - onehot) * probs).sum(dims)
        w = self.class_weights.to(probs)
        if self.batch:
            weights = torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)
            if self.sample_weighting == "label":
                weights = self.label_sample_weights(onehot, non_lvo)
            elif non_lvo is not None:
                weights = torch.where(non_lvo.reshape(-1).bool(), self.non_lvo_factor, 1.0).to(probs)
            if sample_weight is not None:
                weights = weights * sample_weight.reshape(-1).to(probs)
            tp, fn, fp = ((weights[:, None] * counts).sum(0) for counts in (tp, fn, fp))
            ti = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
            loss = (w * (1 - ti).clamp_min(self.epsilon) ** (1 / self.gamma)).sum() / w.sum()
            loss = loss + (weights * ce).mean()  # ce is 0.0 without the term
            return loss if self.reduction != "none" else loss.reshape(1)
        if self.form == "image":
            ti = (w * tp).sum(1) / ((w * (tp + self.alpha * fn + self.beta * fp)).sum(1) + self.epsilon)
            loss = (1 - ti).clamp_min(self.epsilon) ** (1 / self.gamma)
        else:
            ti = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
            per_class = (1 - ti).clamp_min(self.epsilon) ** (1 / self.gamma)
            loss = (w * per_class).sum(1) / w.sum()
        loss = loss + ce
        if self.sample_weighting == "label":
            loss = loss * self.label_sample_weights(onehot, non_lvo)
        elif non_lvo is not None:
            loss = loss * torch.where(non_lvo.reshape(-1).bool(), self.non_lvo_factor, 1.0).to(loss)
        if sample_weight is not None:
            loss = loss * sample_weight.reshape(-1).to(loss)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

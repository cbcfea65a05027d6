"""CLGNet's contrastive loss (paper Sec. 3.3, Eq. 9-10) in the CSD form (docs/design.md,
*Contrastive loss*).

Anchor = network output O, positive = ground truth GT, negatives = K undersampled (zero-filled)
inputs of the same mini-batch. For each VGG19 layer j (relu1_1 ... relu5_1)::

    d_ap_j = mean |phi_j(O) - phi_j(GT)|
    d_an_j = mean over elements of sum_k |phi_j(O) - phi_j(neg_k)|
    L_CL   = sum_j lambda_j * d_ap_j / (d_an_j + eps)        lambda = (1/32, 1/16, 1/8, 1/4, 1)

Choices this module makes (the paper leaves them open):

* ``reduction="batch"`` (default) is the batch-mean ratio of CSD (Wang et al. 2021, the
  paper's ref. [38], whose formulation the paper says it follows): numerator and denominator
  are means over the whole mini-batch, then divided. ``reduction="per_sample"`` is Eq. 9
  literally, a ratio per sample i; the per-sample terms are *averaged* rather than summed
  over i so that the loss scale, and hence the balance alpha = 0.05 against the L1 term
  (itself a mean), does not depend on the batch size.
* Negatives: K = min(K, B) *distinct* batch indices, drawn uniformly without replacement
  (``torch.randperm``) once per call and shared by every anchor of the batch, as in CSD. The
  anchor's own undersampled input can be among them (with K >= B it always is): it is the
  very image the paper wants the result pushed away from. With K >= B all inputs are used and
  nothing is drawn. The draw uses ``generator`` if given, else torch's global CPU RNG. Under
  DDP each rank draws from, and only from, its own local batch (K = min(K, local batch)); no
  inputs are exchanged between ranks.
* ``use_negatives=False`` is the paper's "w/o negative" ablation (Table 3):
  L_CL = sum_j lambda_j * d_ap_j.

Cost (VGG19 to relu5_1 is ~23.7 GMac per 256x256 image, more than CLGNet itself): each call
makes exactly two feature-extractor forwards, whatever K and B are: one *without* gradient
over the concatenation [GT; selected negatives] (B + K images; the K negatives are encoded
once and shared, never per anchor), and one *with* gradient over O (B images). VGG weights
take no gradient, so the backward costs about one more forward over O. The distances are
reduced in float32 (the feature maps may be bf16 under autocast) by ``_LayerTerm``, which
loops over the K negatives, one ``B x C x H x W`` difference at a time, and forms the
layer's gradient in the same pass, so it keeps one map the size of phi_j(O) per layer for the
backward and lets the no-grad features go at once. A broadcast ``B x K x C x H x W``
difference at relu1_1 would be K times larger (~1.6 GB for B = 10, K = 6 at 320x320 in
float32) and slower. Nothing here disables autocast: under bf16 autocast VGG19 runs in bf16.
Nothing is cached on the module: the feature maps live only in the autograd graph of the
returned loss.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..models.registry import PAPER_ALPHA
from .vgg import VGG19Features

DEFAULT_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
REDUCTIONS = ("batch", "per_sample")

FeatureExtractor = Callable[[Tensor], Sequence[Tensor]]


class _LayerTerm(torch.autograd.Function):
    """One layer's term of L_CL (without lambda_j), its gradient computed in the same pass.

    ``a``: anchor features ``B x ...`` (with grad); ``ref``: ``[positives (B); negatives (K)]``
    along dim 0 (no grad); ``reduction``: ``"batch"``, ``"per_sample"`` or ``None`` (no
    negatives: the mean positive distance). With per-sample sums (accumulated in float32,
    float64 for float64 features) ``ap[b] = sum_e |a[b] - ref[b]|`` and
    ``an[b] = sum_k sum_e |a[b] - ref[B + k]|``, the term is a function of (ap, an) only and
    its gradient is ``c_ap[b] * sign(a[b] - ref[b]) + c_an[b] * sum_k sign(a[b] - ref[B + k])``.
    The loop over k builds one ``B x ...`` difference at a time; the sign sums and the
    coefficients are formed in the forward and only their combination (one map the size of
    ``a``) is saved, so the no-grad reference features can be freed at once. Signs follow
    torch's ``abs`` convention (0 at 0).
    """

    @staticmethod
    def forward(ctx, a: Tensor, ref: Tensor, reduction: Optional[str],  # type: ignore[override]
                eps: float) -> Tensor:
        batch, numel = a.shape[0], a[0].numel()
        need_grad = ctx.needs_input_grad[0]
        acc = torch.promote_types(a.dtype, torch.float32)
        dims = tuple(range(1, a.dim()))  # not flatten(1): that copies channels_last maps
        diff, absolute = torch.empty_like(a), torch.empty_like(a)
        an = torch.zeros(batch, dtype=acc, device=a.device)
        neg_signs = torch.zeros_like(a) if need_grad and reduction is not None else None
        for k in range(batch, ref.shape[0] if reduction is not None else batch):
            torch.sub(a, ref[k], out=diff)
            an += torch.abs(diff, out=absolute).sum(dims, dtype=acc)
            if neg_signs is not None:
                neg_signs += diff.sign_()
        torch.sub(a, ref[:batch], out=diff)
        ap = torch.abs(diff, out=absolute).sum(dims, dtype=acc)
        del absolute
        # Gradient coefficients are kept in units of 1 / (B * N), so that they are O(1) and
        # the saved direction does not underflow in half precision; the 1 / (B * N) and the
        # incoming gradient (e.g. a GradScaler's scale) are applied in the backward.
        scale = batch * numel
        if reduction is None:
            value = ap.sum() / scale
            c_ap = c_an = None
        elif reduction == "batch":
            d_ap, d_an = ap.sum() / scale, an.sum() / scale + eps
            value = d_ap / d_an
            c_ap, c_an = (1.0 / d_an).expand(batch), (-d_ap / d_an**2).expand(batch)
        else:  # per_sample: mean over b of (ap_b / N) / (an_b / N + eps)
            d_ap, d_an = ap / numel, an / numel + eps
            value = (d_ap / d_an).mean()
            c_ap, c_an = 1.0 / d_an, -d_ap / d_an**2
        if need_grad:
            shape = (batch,) + (1,) * (a.dim() - 1)
            direction = diff.sign_()
            if c_ap is not None:
                direction.mul_(c_ap.to(a.dtype).view(shape))
            if neg_signs is not None:
                direction.addcmul_(neg_signs, c_an.to(a.dtype).view(shape))
            ctx.save_for_backward(direction)
            ctx.scale = scale
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (direction,) = ctx.saved_tensors
        return direction * (grad / ctx.scale), None, None, None


def _as_images(x: Tensor, name: str) -> Tensor:
    """B x H x W or B x 1 x H x W -> B x 1 x H x W."""
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name} must be B x H x W or B x 1 x H x W, got {tuple(x.shape)}")


def _same_shape(x: Tensor, name: str, like: Tensor) -> Tensor:
    x = _as_images(x, name)
    if x.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, the output {tuple(like.shape)}; they must match"
        )
    return x


class ContrastiveLoss(nn.Module):
    """L_CL of CLGNet; see the module docstring for the definition and choices.

    Args:
        k_negatives: K, the number of undersampled inputs used as negatives (paper: 6);
            capped at the batch size.
        layer_weights: lambda_j, one per feature layer.
        use_negatives: False gives the "w/o negative" ablation (weighted positive distance).
        reduction: ``"batch"`` (CSD's batch-mean ratio, default) or ``"per_sample"`` (Eq. 9,
            ratio per sample, averaged over the batch).
        eps: added to the negative distance (CSD uses 1e-7).
        features: any callable mapping ``B x 1 x H x W`` to a list of feature maps, one per
            layer weight; default :class:`VGG19Features` with ImageNet weights (raises
            :class:`~clgnet_fastmri.errors.UserError` when they are not available; pass
            ``VGG19Features(weights=None)`` for random initialisation).
        generator: torch.Generator for the negative draw (default: the global CPU RNG).
    """

    def __init__(
        self,
        k_negatives: int = 6,
        layer_weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
        use_negatives: bool = True,
        reduction: str = "batch",
        eps: float = 1e-7,
        features: Optional[Union[nn.Module, FeatureExtractor]] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        if use_negatives and int(k_negatives) < 1:
            raise ValueError(f"k_negatives must be at least 1, not {k_negatives}")
        self.layer_weights: Tuple[float, ...] = tuple(float(w) for w in layer_weights)
        if not self.layer_weights:
            raise ValueError("layer_weights must not be empty")
        self.k_negatives = int(k_negatives)
        self.use_negatives = bool(use_negatives)
        self.reduction = reduction
        self.eps = float(eps)
        self.generator = generator
        self.features = VGG19Features() if features is None else features

    def extra_repr(self) -> str:
        return (
            f"k_negatives={self.k_negatives}, use_negatives={self.use_negatives}, "
            f"reduction={self.reduction!r}, eps={self.eps}, layer_weights={self.layer_weights}"
        )

    def draw_negatives(self, batch_size: int, device: Optional[torch.device] = None) -> Tensor:
        """Indices of the K = min(K, B) negatives: distinct, uniform, shared by the batch."""
        k = min(self.k_negatives, batch_size)
        if k >= batch_size:
            index = torch.arange(batch_size)
        else:
            rng_device = self.generator.device if self.generator is not None else "cpu"
            index = torch.randperm(batch_size, generator=self.generator, device=rng_device)[:k]
        return index.to(device)

    def forward(
        self,
        output: Tensor,
        target: Tensor,
        undersampled: Optional[Tensor] = None,
        negative_index: Optional[Tensor] = None,
    ) -> Tensor:
        """L_CL as a float32 scalar.

        ``output`` (anchor), ``target`` (positive), ``undersampled`` (the network inputs, the
        pool of negatives): each ``B x H x W`` or ``B x 1 x H x W``. ``negative_index``
        overrides the random draw (1-D indices into the batch).
        """
        output = _as_images(output, "output")
        target = _same_shape(target, "target", output)
        batch = output.shape[0]
        reference = target
        if self.use_negatives:
            if undersampled is None:
                raise ValueError("undersampled inputs are needed as negatives (use_negatives)")
            undersampled = _same_shape(undersampled, "undersampled", output)
            if negative_index is None:
                negative_index = self.draw_negatives(batch, output.device)
            negatives = undersampled.index_select(0, negative_index.to(output.device))
            reference = torch.cat([target, negatives])
        with torch.no_grad():
            # One forward for the positives and the shared negatives together.
            ref_features = self.features(reference.detach())
        anchor_features = self.features(output)
        if not (len(anchor_features) == len(ref_features) == len(self.layer_weights)):
            raise ValueError(
                f"the feature extractor returned {len(anchor_features)} feature maps but "
                f"{len(self.layer_weights)} layer weights are set"
            )
        loss = output.new_zeros((), dtype=torch.promote_types(output.dtype, torch.float32))
        reduction = self.reduction if self.use_negatives else None
        for weight, anchor, ref in zip(self.layer_weights, anchor_features, ref_features):
            loss = loss + weight * _LayerTerm.apply(anchor, ref, reduction, self.eps)
        return loss


class LossParts(NamedTuple):
    """The total loss and its two parts (for logging), all float32 scalars with graph."""

    total: Tensor
    l1: Tensor
    contrastive: Tensor


class CLGNetLoss(nn.Module):
    """Eq. 10: ``L1(O, GT) + alpha * L_CL``, returned as :class:`LossParts`.

    ``contrastive`` defaults to :class:`ContrastiveLoss` with ImageNet VGG19 weights. With
    ``alpha=0`` no contrastive loss is built or evaluated (no VGG forward at all) and the
    ``contrastive`` part is a zero.
    """

    def __init__(self, alpha: float = PAPER_ALPHA, contrastive: Optional[ContrastiveLoss] = None):
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, not {alpha}")
        self.alpha = float(alpha)
        if contrastive is None and self.alpha > 0:
            contrastive = ContrastiveLoss()
        self.contrastive = contrastive

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(
        self,
        output: Tensor,
        target: Tensor,
        undersampled: Optional[Tensor] = None,
        negative_index: Optional[Tensor] = None,
    ) -> LossParts:
        output = _as_images(output, "output")
        target = _same_shape(target, "target", output)
        l1 = F.l1_loss(output.float(), target.float())
        if self.alpha == 0 or self.contrastive is None:
            return LossParts(l1, l1, torch.zeros_like(l1))
        contrastive = self.contrastive(output, target, undersampled, negative_index)
        return LossParts(l1 + self.alpha * contrastive, l1, contrastive)


__all__: List[str] = [
    "CLGNetLoss",
    "ContrastiveLoss",
    "DEFAULT_LAYER_WEIGHTS",
    "LossParts",
]

"""The orientation adversary of adversarial banding removal (Defazio et al., NeurIPS 2020)."""

from __future__ import annotations

from torch import Tensor, nn


class OrientationAdversary(nn.Module):
    """Classifier that guesses whether a reoriented reconstruction was transposed.

    Paper: "MRI Banding Removal via Adversarial Training" (Defazio, Murrell, Recht, 2020).
    The adversary sees a reconstruction after ``banding.augment.reorient``: the anatomy is
    always in its acquired orientation, the phase-encoding direction is the columns for label
    0 and the rows for label 1, so the only orientation cue left is the direction of the
    network's phase-encoding artefacts (banding). It sees the reconstruction alone, as in
    the paper: no target, no input.

    Choices the paper leaves open (it uses a shallow ResNet): a small plain CNN, cheap next
    to the reconstruction network, and shallow: global average pooling over features with a
    small receptive field makes it a detector of local orientation statistics, where a
    deeper network memorises the anatomy of a small training set instead:

    * each image is standardised (zero mean, unit standard deviation over its pixels), as
      fastMRI's code does before its adversary, so intensity scale is no cue;
    * Conv3x3(1 -> chans) + ReLU at full resolution, so streaks a few pixels wide are seen
      before any striding aliases them;
    * ``num_downs`` x [Conv3x3 stride 2, GroupNorm, ReLU], channels doubling up to
      ``4 * chans`` (GroupNorm, not BatchNorm: no running statistics, so the adversary behaves
      the same whether it is being trained or used frozen, and under DDP needs no buffer
      synchronisation);
    * global average pooling and a linear layer to one logit.

    Args:
        chans: Channels of the first convolution.
        num_downs: Stride-2 stages (receptive field grows as 2**num_downs).

    Shapes:
        input ``B x H x W`` or ``B x 1 x H x W``; output ``B`` logits (> 0: "transposed").
    """

    def __init__(self, chans: int = 16, num_downs: int = 2):
        super().__init__()
        if chans < 1 or num_downs < 0:
            raise ValueError(f"need chans >= 1 and num_downs >= 0, not {chans}, {num_downs}")
        layers = [nn.Conv2d(1, chans, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        width = chans
        for _ in range(num_downs):
            out = min(2 * width, 4 * chans)
            layers += [
                nn.Conv2d(width, out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.GroupNorm(min(8, out), out),
                nn.ReLU(inplace=True),
            ]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() == 3:
            image = image.unsqueeze(1)
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(
                f"expected B x H x W or B x 1 x H x W images, got {tuple(image.shape)}"
            )
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True)
        image = (image - mean) / (std + 1e-6)
        features = self.features(image).mean(dim=(-2, -1))
        return self.head(features).squeeze(1)

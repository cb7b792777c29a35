"""Inference-time rewrites of a network that leave its output unchanged (up to rounding).

- **Batch norm folded into the convolution before it.** In eval mode
  ``BN(conv(x)) = gamma * (W * x + b - mean) / sqrt(var + eps) + beta`` is itself a convolution
  with weights ``W * gamma / sqrt(var + eps)`` and a new bias, so the normalisation's separate
  pass over every feature map disappears. MONAI builds its networks' layers from
  :class:`monai.networks.blocks.Convolution`: a ``Sequential`` of ``conv`` and ``adn`` (norm,
  dropout, activation, in the configured order). Where ``adn`` starts with a batch norm holding
  running statistics, it is folded into ``conv`` and replaced by an identity.
- **channels-last 3-D memory format** (``torch.channels_last_3d``): oneDNN's fastest CPU
  convolution kernels work on channels-last tensors; with contiguous tensors every layer
  converts back and forth. On a 2-core AVX2 CPU a whole 1 mm head (2 x 192 x 224 x 192) took
  1.8 s instead of 2.9 s with both rewrites.
"""

from __future__ import annotations

import copy

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norm", "inference_network"]

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def fold_batch_norm(network: torch.nn.Module, *, inplace: bool = False) -> tuple[torch.nn.Module, int]:
    """``network`` in eval mode with each conv -> batch norm pair folded into one conv.

    Returns:
        ``(network, n_folded)``: a folded copy (or ``network`` itself, changed, when ``inplace``);
        ``network`` itself, untouched, when nothing could be folded.
    """
    if not any(_foldable(m) for m in network.modules()):
        return network, 0
    folded = (network if inplace else copy.deepcopy(network)).eval()
    count = 0
    for block in folded.modules():
        if _foldable(block):
            norm = block.adn.N
            block.conv = fuse_conv_bn_eval(block.conv, norm, transpose=isinstance(block.conv, _TRANSPOSED))
            block.adn.N = torch.nn.Identity()
            count += 1
    return folded, count


def _foldable(block: torch.nn.Module) -> bool:
    conv = getattr(block, "conv", None)
    adn = getattr(block, "adn", None)
    if not isinstance(block, torch.nn.Sequential) or not isinstance(conv, _CONVS + _TRANSPOSED):
        return False
    if not isinstance(adn, torch.nn.Sequential) or not len(adn) or next(iter(adn.named_children()))[0] != "N":
        return False
    norm = adn.N
    return (isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
            and norm.running_mean is not None and norm.running_var is not None)


def inference_network(network: torch.nn.Module, device: torch.device, *,
                      channels_last: bool) -> tuple[torch.nn.Module, int]:
    """An eval-mode copy of ``network`` on ``device``, batch norm folded, optionally channels-last.

    ``network`` itself is never modified. Returns ``(network, n_folded_batch_norms)``.
    """
    net = copy.deepcopy(network).to(device).eval()
    net, folded = fold_batch_norm(net, inplace=True)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    return net, folded

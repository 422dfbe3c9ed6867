"""The SuperTransformer: one set of weights shared by every SubTransformer of a space, as in HAT.

The supernet holds the weights of the space's largest SubTransformer under the parameter
names of `profiler.model.SubTransformer`. A SubTransformer uses the leading slice of every
matrix (embedding dims, FFN dims; heads only re-split the fixed qkv_dim), the first layers
of each stack, and its own arbitrary encoder-decoder attention. Running an arch means
calling the very `SubTransformer` code on sliced views of the shared weights, so the
extracted model (`extract_subtransformer`) computes exactly what the supernet trained and
scored, and the latency measured for it is the latency of the searched model.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.func import functional_call

from profiler.model import SubTransformer, sinusoidal_positions
from profiler.space import ArchConfig, DesignSpace

logger = logging.getLogger(__name__)


def _leading(weight: Tensor, shape: torch.Size) -> Tensor:
    return weight[tuple(slice(0, n) for n in shape)]


class SuperTransformer(nn.Module):
    """Weights of the largest SubTransformer of `space`, shared by all of its SubTransformers."""

    def __init__(self, space: DesignSpace, seed: int = 0, skeleton_cache: int = 256):
        super().__init__()
        self.space = space
        self.shared = SubTransformer(space.largest(), space, seed)
        self.arch = space.largest()
        self._skeleton_cache = skeleton_cache
        self._skeletons: OrderedDict[str, SubTransformer] = OrderedDict()
        self._positions: dict[int, Tensor] = {}

    def set_arch(self, arch: ArchConfig) -> None:
        """Make `arch` the SubTransformer that `forward` runs by default."""
        self.arch = arch.validate(self.space)

    def _skeleton(self, arch: ArchConfig) -> SubTransformer:
        """A weightless (meta-device) SubTransformer of `arch`: its structure and names only."""
        skeleton = self._skeletons.get(arch.arch_id)
        if skeleton is None:
            with torch.device("meta"):
                skeleton = SubTransformer(arch, self.space)
            self._skeletons[arch.arch_id] = skeleton
            if len(self._skeletons) > self._skeleton_cache:
                self._skeletons.popitem(last=False)
        else:
            self._skeletons.move_to_end(arch.arch_id)
        return skeleton

    def _position_table(self, dim: int) -> Tensor:
        if dim not in self._positions:
            self._positions[dim] = sinusoidal_positions(self.space.max_positions, dim)
        return self._positions[dim]

    def sub_weights(self, arch: ArchConfig) -> dict[str, Tensor]:
        """The parameters of `arch` as leading slices (views) of the shared weights."""
        arch.validate(self.space)
        shared = dict(self.shared.named_parameters())
        return {name: _leading(shared[name], p.shape) for name, p in self._skeleton(arch).named_parameters()}

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """Logits of `arch` (default: the arch of `set_arch`), gradients flowing to the shared weights."""
        arch = self.arch if arch is None else arch
        tensors = self.sub_weights(arch)
        tensors["encoder_embed.positions"] = self._position_table(arch.encoder_embed_dim)
        tensors["decoder_embed.positions"] = self._position_table(arch.decoder_embed_dim)
        return functional_call(self._skeleton(arch), tensors, (src_tokens, prev_output_tokens), strict=True)


@torch.no_grad()
def extract_subtransformer(supernet: SuperTransformer, arch: ArchConfig) -> SubTransformer:
    """A standalone `SubTransformer` of `arch` holding copies of its inherited weights (eval mode)."""
    model = SubTransformer(arch, supernet.space)
    model.load_state_dict({name: w.detach().clone() for name, w in supernet.sub_weights(arch).items()})
    return model.eval()

from __future__ import annotations

import random

import pytest
import torch

from nas.corpus import make_batch
from nas.supernet import SuperTransformer, extract_subtransformer
from profiler.errors import SpaceError
from profiler.model import SubTransformer
from profiler.space import DesignSpace, load_space

COMPACT = load_space("compact")


def tiny_space() -> DesignSpace:
    return DesignSpace(name="tiny", encoder_embed_dim=(32, 24), decoder_embed_dim=(32, 16),
                       encoder_layer_num=(2, 3), decoder_layer_num=(1, 2), encoder_ffn_embed_dim=(64, 32),
                       decoder_ffn_embed_dim=(64, 48), encoder_self_attention_heads=(4, 2),
                       decoder_self_attention_heads=(4, 2), decoder_ende_attention_heads=(4, 2),
                       decoder_arbitrary_ende_attn=(-1, 1), qkv_dim=16, src_vocab=50, tgt_vocab=60,
                       max_positions=32)


def random_batch(space: DesignSpace, seed: int = 0):
    gen = random.Random(seed)
    pairs = []
    for _ in range(5):
        src = tuple(gen.randrange(4, space.src_vocab) for _ in range(gen.randint(1, 9)))
        tgt = tuple(gen.randrange(4, space.tgt_vocab) for _ in range(gen.randint(1, 9)))
        pairs.append((src, tgt))
    return make_batch(pairs)


def test_extracted_subtransformer_matches_the_supernet_compact() -> None:
    net = SuperTransformer(COMPACT, seed=1)
    batch = random_batch(COMPACT)
    archs = [COMPACT.largest(), COMPACT.smallest()] + COMPACT.sample_many(3, seed=4)
    with torch.no_grad():
        for arch in archs:
            sub = extract_subtransformer(net, arch)
            assert type(sub) is SubTransformer and sub.arch == arch
            expected = net(batch.src, batch.prev_output, arch)
            assert expected.shape[-1] == COMPACT.tgt_vocab
            assert (sub(batch.src, batch.prev_output) - expected).abs().max() < 1e-5
            net.set_arch(arch)
            assert torch.equal(net(batch.src, batch.prev_output), expected)


def test_subtransformers_use_the_leading_slices_of_the_first_layers() -> None:
    space = tiny_space()
    net = SuperTransformer(space, seed=0)
    small = space.smallest()
    batch = random_batch(space, seed=1)
    weights = net.sub_weights(small)
    fc1 = weights["encoder_layers.0.ffn.fc1.weight"]
    assert fc1.shape == (32, 24)
    assert fc1.data_ptr() == net.shared.encoder_layers[0].ffn.fc1.weight.data_ptr()  # a view, shared
    assert "encoder_layers.2.ffn.fc1.weight" not in weights  # the third layer is not used
    with torch.no_grad():
        before = net(batch.src, batch.prev_output, small)
        # Weights outside the slice, or in a layer the arch does not have, change nothing ...
        net.shared.encoder_layers[0].ffn.fc1.weight[40:, :] += 1.0
        net.shared.encoder_layers[0].ffn.fc1.weight[:, 30:] += 1.0
        net.shared.encoder_layers[2].ffn.fc1.weight += 1.0
        net.shared.decoder_embed.weight[:, 20:] += 1.0
        assert torch.equal(net(batch.src, batch.prev_output, small), before)
        # ... and a weight inside the leading slice changes the output.
        net.shared.encoder_layers[0].ffn.fc1.weight[0, 0] += 1.0
        assert not torch.equal(net(batch.src, batch.prev_output, small), before)


def test_gradients_reach_only_the_inherited_slices() -> None:
    space = tiny_space()
    net = SuperTransformer(space, seed=0)
    batch = random_batch(space)
    net(batch.src, batch.prev_output, space.smallest()).sum().backward()
    grad = net.shared.encoder_layers[0].ffn.fc1.weight.grad
    assert grad[:32, :24].abs().sum() > 0
    assert grad[32:].abs().sum() == 0 and grad[:, 24:].abs().sum() == 0
    assert net.shared.encoder_layers[2].ffn.fc1.weight.grad is None


def test_arch_outside_the_space_is_refused() -> None:
    net = SuperTransformer(tiny_space())
    with pytest.raises(SpaceError, match="not in space"):
        net.set_arch(COMPACT.largest())

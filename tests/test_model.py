from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from profiler.cost import count_macs, count_params
from profiler.model import BOS, PAD, SubTransformer
from profiler.space import ArchConfig, load_space

SPACE = load_space("compact")
MIXED = ArchConfig.from_dict({
    **SPACE.largest().to_dict(),
    "decoder_arbitrary_ende_attn": [-1, 1, 2, 1],
    "decoder_self_attention_heads": [2, 4, 2, 4],
    "decoder_ffn_embed_dim": [256, 512, 1024, 256],
    "encoder_embed_dim": 192,
})
ARCHS = [SPACE.largest(), SPACE.smallest(), MIXED]


def _tokens(shape, seed=0):
    return torch.randint(4, SPACE.src_vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.arch_id)
def test_incremental_decoding_matches_teacher_forcing(arch):
    model = SubTransformer(arch, SPACE).eval()
    src = _tokens((2, 12))
    prev = torch.cat([torch.full((2, 1), BOS), _tokens((2, 9), seed=1)], dim=1)
    with torch.inference_mode():
        parallel = torch.log_softmax(model(src, prev), dim=-1)
        cross = model.cross_kv(model.encode(src))
        cache = model.empty_cache(2)
        steps = []
        for t in range(prev.shape[1]):
            log_probs, cache = model.decode_step(prev[:, t:t + 1], torch.tensor(t), cache, cross)
            steps.append(log_probs)
    assert torch.allclose(parallel, torch.stack(steps, dim=1), atol=1e-5)
    assert cache[0][0].shape[2] == prev.shape[1]


def test_source_padding_is_masked():
    model = SubTransformer(MIXED, SPACE).eval()
    src = _tokens((1, 8))
    padded = torch.cat([src, torch.full((1, 3), PAD)], dim=1)
    prev = torch.tensor([[BOS, 7, 9]])
    with torch.inference_mode():
        assert torch.allclose(model(src, prev), model(padded, prev), atol=1e-5)


def test_cross_kv_broadcasts_over_beams():
    model = SubTransformer(MIXED, SPACE).eval()
    with torch.inference_mode():
        cross = model.cross_kv(model.encode(_tokens((1, 10))))
        tokens = torch.tensor([[BOS], [5], [6]])
        log_probs, _ = model.decode_step(tokens, torch.tensor(0), model.empty_cache(3), cross)
        for i in range(3):
            single, _ = model.decode_step(tokens[i:i + 1], torch.tensor(0), model.empty_cache(1), cross)
            assert torch.allclose(log_probs[i], single[0], atol=1e-6)
    # arbitrary attention: layer i attends over (1, 2, 3, 2) x the source length
    assert [k.shape[2] for k, _ in cross] == [10, 20, 30, 20]


def test_initialisation_is_deterministic_and_seeded():
    a = SubTransformer(MIXED, SPACE, seed=1).state_dict()
    b = SubTransformer(MIXED, SPACE, seed=1).state_dict()
    c = SubTransformer(MIXED, SPACE, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder_layers.0.ffn.fc1.weight"], c["encoder_layers.0.ffn.fc1.weight"])


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.arch_id)
def test_param_count_matches_model(arch):
    model = SubTransformer(arch, SPACE)
    counts = count_params(arch, SPACE)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embeddings"] == model.encoder_embed.weight.numel() + model.decoder_embed.weight.numel()
    assert counts["total_without_embeddings"] == counts["total"] - counts["embeddings"]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.arch_id)
def test_mac_count_matches_torch_flop_counter(arch):
    seq_len, beam = 7, 3
    model = SubTransformer(arch, SPACE).eval()
    with torch.inference_mode():
        with FlopCounterMode(display=False) as enc:
            states = model.encode(_tokens((1, seq_len)))
        with FlopCounterMode(display=False) as dec:
            cross = model.cross_kv(states)
            cache = model.empty_cache(beam)
            tokens = torch.full((beam, 1), BOS)
            for t in range(seq_len):
                _, cache = model.decode_step(tokens, torch.tensor(t), cache, cross)
    macs = count_macs(arch, SPACE, seq_len=seq_len, beam=beam)
    assert macs["encoder"] == enc.get_total_flops() // 2
    assert macs["decoder"] == dec.get_total_flops() // 2
    assert macs["output_projection"] == beam * seq_len * arch.decoder_embed_dim * SPACE.tgt_vocab

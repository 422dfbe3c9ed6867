"""A standalone SubTransformer built from an `ArchConfig`.

The layout follows HAT's SubTransformer: per-layer FFN widths and head counts, a
fixed attention width (`qkv_dim`, so heads only change the split), and arbitrary
encoder-decoder attention (a decoder layer attends to the concatenation of the last
1, 2 or 3 encoder layers' outputs). Layers are pre-norm for stable CPU training.

The same module serves three uses: teacher-forced `forward` (training, validation
loss), `encode` / `cross_kv` / `decode_step` (incremental decoding with an explicit
cache, the shape that export and timing need), and weight inheritance from the
supernet (the parameter names are the supernet's).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from profiler.space import ArchConfig, DesignSpace

PAD, BOS, EOS, UNK = 0, 1, 2, 3

KV = tuple[Tensor, Tensor]


def sinusoidal_positions(max_positions: int, dim: int) -> Tensor:
    """fairseq's sinusoidal position table, shape (max_positions, dim)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(max_positions, 1)], dim=1)
    return table


class Embedding(nn.Module):
    """Scaled token embedding plus sinusoidal positions starting at `offset`."""

    def __init__(self, vocab: int, dim: int, max_positions: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim))
        self.scale = math.sqrt(dim)
        self.register_buffer("positions", sinusoidal_positions(max_positions, dim), persistent=False)

    def forward(self, tokens: Tensor, offset: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device) + offset
        return nn.functional.embedding(tokens, self.weight) * self.scale + self.positions[positions]


class Attention(nn.Module):
    """Multi-head attention projecting to a fixed `qkv_dim`; `heads` only splits it."""

    def __init__(self, query_dim: int, key_dim: int, qkv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = qkv_dim // heads
        self.q_proj = nn.Linear(query_dim, qkv_dim)
        self.k_proj = nn.Linear(key_dim, qkv_dim)
        self.v_proj = nn.Linear(key_dim, qkv_dim)
        self.out_proj = nn.Linear(qkv_dim, query_dim)

    def _split(self, x: Tensor) -> Tensor:
        n, t = x.shape[0], x.shape[1]
        return x.view(n, t, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> KV:
        """Keys and values of `memory` (N, S, key_dim), each (N, heads, S, head_dim)."""
        return self._split(self.k_proj(memory)), self._split(self.v_proj(memory))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend from `x` (N, T, query_dim); `k`/`v` may have batch 1 (broadcast over beams)."""
        q = self._split(self.q_proj(x)) * self.head_dim ** -0.5
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        out = torch.softmax(scores, dim=-1) @ v
        n, t = out.shape[0], out.shape[2]
        return self.out_proj(out.transpose(1, 2).reshape(n, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, ffn: int, heads: int, qkv_dim: int):
        super().__init__()
        self.self_attn = Attention(dim, dim, qkv_dim, heads)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.self_attn_norm(x)
        k, v = self.self_attn.project_kv(h)
        x = x + self.self_attn.attend(h, k, v, mask)
        return x + self.ffn(self.ffn_norm(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, encoder_dim: int, ffn: int, heads: int, ende_heads: int,
                 ende_layers: int, qkv_dim: int):
        super().__init__()
        self.ende_layers = ende_layers
        self.self_attn = Attention(dim, dim, qkv_dim, heads)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, encoder_dim, qkv_dim, ende_heads)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn)
        self.ffn_norm = nn.LayerNorm(dim)

    def cross_kv(self, encoder_states: Tensor) -> KV:
        """Keys/values over the last `ende_layers` encoder outputs, concatenated in time."""
        memory = torch.cat([encoder_states[i] for i in range(-self.ende_layers, 0)], dim=1)
        return self.cross_attn.project_kv(memory)

    def forward(self, x: Tensor, cache: KV, cross: KV, self_mask: Tensor | None = None,
                cross_mask: Tensor | None = None) -> tuple[Tensor, KV]:
        h = self.self_attn_norm(x)
        k, v = self.self_attn.project_kv(h)
        k = torch.cat([cache[0], k], dim=2)
        v = torch.cat([cache[1], v], dim=2)
        x = x + self.self_attn.attend(h, k, v, self_mask)
        x = x + self.cross_attn.attend(self.cross_attn_norm(x), cross[0], cross[1], cross_mask)
        return x + self.ffn(self.ffn_norm(x)), (k, v)


class SubTransformer(nn.Module):
    """An encoder-decoder Transformer with HAT's per-layer widths."""

    def __init__(self, arch: ArchConfig, space: DesignSpace, seed: int = 0):
        super().__init__()
        arch.validate(space)
        self.arch = arch
        self.space = space
        q = space.qkv_dim
        enc_dim, dec_dim = arch.encoder_embed_dim, arch.decoder_embed_dim
        self.encoder_embed = Embedding(space.src_vocab, enc_dim, space.max_positions)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(enc_dim, ffn, heads, q)
            for ffn, heads in zip(arch.encoder_ffn_embed_dim, arch.encoder_self_attention_heads)
        )
        self.encoder_norm = nn.LayerNorm(enc_dim)
        self.decoder_embed = Embedding(space.tgt_vocab, dec_dim, space.max_positions)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(dec_dim, enc_dim, ffn, heads, ende_heads, ende, q)
            for ffn, heads, ende_heads, ende in zip(
                arch.decoder_ffn_embed_dim, arch.decoder_self_attention_heads,
                arch.decoder_ende_attention_heads, arch.ende_layers)
        )
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.encoder_states_kept = max(arch.ende_layers)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Deterministic initialisation from `seed`, leaving the global RNG untouched."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("embed.weight"):
                p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
                p[PAD].zero_()
            elif p.dim() == 2:
                bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
                p.uniform_(-bound, bound, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()

    # --- incremental decoding: the shapes that export and timing use -------------------
    def encode(self, src_tokens: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Encoder outputs of the last `encoder_states_kept` layers, (K, N, S, D), normalised."""
        x = self.encoder_embed(src_tokens, torch.zeros((), dtype=torch.long))
        states = []
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
            states.append(x)
        return torch.stack([self.encoder_norm(s) for s in states[-self.encoder_states_kept:]])

    def cross_kv(self, encoder_states: Tensor) -> list[KV]:
        """Per decoder layer, encoder-decoder keys and values: computed once per sentence."""
        return [layer.cross_kv(encoder_states) for layer in self.decoder_layers]

    def empty_cache(self, batch: int) -> list[KV]:
        """Self-attention caches holding no positions yet."""
        cache = []
        for layer in self.decoder_layers:
            attn = layer.self_attn
            empty = torch.zeros(batch, attn.heads, 0, attn.head_dim)
            cache.append((empty, empty))
        return cache

    def decode(self, tokens: Tensor, offset: Tensor, cache: list[KV], cross: list[KV],
               self_mask: Tensor | None = None, cross_masks: list[Tensor] | None = None
               ) -> tuple[Tensor, list[KV]]:
        """Logits (N, T, vocab) for `tokens` at positions `offset`.., and the grown caches."""
        x = self.decoder_embed(tokens, offset)
        new_cache = []
        for i, layer in enumerate(self.decoder_layers):
            cross_mask = None if cross_masks is None else cross_masks[i]
            x, kv = layer(x, cache[i], cross[i], self_mask, cross_mask)
            new_cache.append(kv)
        logits = nn.functional.linear(self.decoder_norm(x), self.decoder_embed.weight)
        return logits, new_cache

    def decode_step(self, tokens: Tensor, step: Tensor, cache: list[KV], cross: list[KV]
                    ) -> tuple[Tensor, list[KV]]:
        """One decoding step: `tokens` (N, 1) -> log-probabilities (N, vocab), grown caches."""
        logits, new_cache = self.decode(tokens, step, cache, cross)
        return torch.log_softmax(logits[:, -1], dim=-1), new_cache

    # --- teacher forcing: training and validation loss ---------------------------------
    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor) -> Tensor:
        """Logits (N, T, vocab) for every target position, padding masked out."""
        src_pad = (src_tokens == PAD)[:, None, None, :]
        src_mask = torch.zeros(src_pad.shape).masked_fill(src_pad, float("-inf"))
        states = self.encode(src_tokens, src_mask)
        t = prev_output_tokens.shape[1]
        causal = torch.full((t, t), float("-inf")).triu(1)
        cross_masks = [src_mask.repeat(1, 1, 1, n) for n in self.arch.ende_layers]
        logits, _ = self.decode(prev_output_tokens, torch.zeros((), dtype=torch.long),
                                self.empty_cache(src_tokens.shape[0]), self.cross_kv(states),
                                causal, cross_masks)
        return logits

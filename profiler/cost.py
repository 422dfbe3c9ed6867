"""Analytic parameter and multiply-accumulate (MAC) counts of a SubTransformer.

Counted from the `ArchConfig` alone, without building a model, so predictors and
search can use them cheaply. MACs count matrix products only (projections,
attention scores and mixing, FFN, output projection), for HAT's workload: batch 1,
a `seq_len`-token source, the encoder once, then `seq_len` incremental decoder steps
at beam `beam`, the encoder-decoder keys/values computed once.
"""
from __future__ import annotations

from profiler.space import ArchConfig, DesignSpace


def _attention_params(query_dim: int, key_dim: int, qkv_dim: int) -> int:
    return (query_dim + 1) * qkv_dim + 2 * (key_dim + 1) * qkv_dim + (qkv_dim + 1) * query_dim


def _ffn_params(dim: int, hidden: int) -> int:
    return (dim + 1) * hidden + (hidden + 1) * dim


def count_params(arch: ArchConfig, space: DesignSpace) -> dict[str, int]:
    """Parameters by part. The output projection shares the decoder embedding."""
    q, enc, dec = space.qkv_dim, arch.encoder_embed_dim, arch.decoder_embed_dim
    encoder = sum(_attention_params(enc, enc, q) + _ffn_params(enc, f) + 4 * enc
                  for f in arch.encoder_ffn_embed_dim) + 2 * enc
    decoder = sum(_attention_params(dec, dec, q) + _attention_params(dec, enc, q)
                  + _ffn_params(dec, f) + 6 * dec
                  for f in arch.decoder_ffn_embed_dim) + 2 * dec
    embeddings = space.src_vocab * enc + space.tgt_vocab * dec
    return {
        "encoder": encoder,
        "decoder": decoder,
        "embeddings": embeddings,
        "total": encoder + decoder + embeddings,
        "total_without_embeddings": encoder + decoder,
    }


def count_macs(arch: ArchConfig, space: DesignSpace, seq_len: int = 30, beam: int = 5) -> dict[str, int]:
    """MACs of one timed latency measurement, by part."""
    q, enc, dec, s = space.qkv_dim, arch.encoder_embed_dim, arch.decoder_embed_dim, seq_len
    encoder = sum(4 * s * enc * q + 2 * s * s * q + 2 * s * enc * f for f in arch.encoder_ffn_embed_dim)
    cross_kv = sum(2 * n * s * enc * q for n in arch.ende_layers)
    # Step t attends over t + 1 cached positions; summed over seq_len steps.
    cached_positions = s * (s + 1) // 2
    steps = 0
    for f, n in zip(arch.decoder_ffn_embed_dim, arch.ende_layers):
        per_step = 4 * dec * q + 2 * dec * q + 2 * n * s * q + 2 * dec * f
        steps += beam * (s * per_step + 2 * cached_positions * q)
    output = beam * s * dec * space.tgt_vocab
    return {
        "encoder": encoder,
        "decoder": cross_kv + steps + output,
        "output_projection": output,
        "total": encoder + cross_kv + steps + output,
        "total_without_output": encoder + cross_kv + steps,
    }

"""Feature sets for latency predictors, extracted in batches with numpy.

- "hat": HAT's 10 features divided by `HAT_FEATURE_NORM` (HAT's predictor input).
- "hat-cost": "hat" plus the products of HAT's averages that MAC and parameter counts
  are linear in (layers x dim x FFN width, layers x attended encoder layers, ...).
  Computable from HAT's CSV files alone, with no space or workload needed.
- "hat-macs": "hat-cost" plus each part's MACs (encoder; decoder with its output
  projection), for the space's attention width and vocabulary and the data's sequence
  length and beam. Exact from HAT's averages too (every count is linear in per-layer
  genes), so it needs the space but not full architectures.
- "arch": "hat-cost" plus per-layer genes padded to the space's largest layer counts,
  and MACs and parameters per part (as `profiler.cost` counts them) for the data's
  sequence length and beam. Needs each row's full architecture and its space.

Architectures are first packed into an `ArchArrays` (integer arrays, one row each) by C-level
iteration over their genes; everything after that is vectorised, which is what lets a predictor score
hundreds of thousands of architectures a second.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Sequence

import numpy as np
import pandas as pd

from profiler.errors import PredictorError, SpaceError
from profiler.space import ArchConfig, DesignSpace, load_space
from profiler.vocabulary import (DECODER_LAYER_GENES, ENCODER_LAYER_GENES, ENDE_ATTN_LAYERS, HAT_FEATURE_NORM,
                                 HAT_FEATURES, SCALAR_GENES)

from predictor.data import ARCH_COLUMN, has_arch, has_hat_features

log = logging.getLogger(__name__)

#: Bumped whenever a feature's definition changes; saved predictors record it.
FEATURES_VERSION = 1
FEATURE_SETS = ("hat", "hat-cost", "hat-macs", "arch")

_NORM = np.asarray(HAT_FEATURE_NORM, dtype=np.float64)
_COST_PRODUCTS = (
    # name, indices into the normalised HAT features multiplied together
    ("enc_layers_x_dim", (1, 0)), ("enc_layers_x_dim_x_ffn", (1, 0, 2)),
    ("enc_layers_x_ffn", (1, 2)), ("enc_layers_x_heads", (1, 3)),
    ("dec_layers_x_dim", (5, 4)), ("dec_layers_x_dim_x_ffn", (5, 4, 6)),
    ("dec_layers_x_ffn", (5, 6)), ("dec_layers_x_heads", (5, 7)),
    ("dec_layers_x_ende_heads", (5, 8)), ("dec_layers_x_ende_layers", (5, 9)),
    ("dec_layers_x_ende_layers_x_enc_dim", (5, 9, 0)), ("dec_layers_x_enc_dim", (5, 0)),
)
_COST_COUNTS = ("gmacs_encoder", "gmacs_decoder", "gmacs_output",
                "mparams_encoder", "mparams_decoder", "mparams_embeddings")
_PART_MACS = ("gmacs_encoder", "gmacs_decoder")


@dataclass(frozen=True)
class FeatureContext:
    """What features need beyond the architecture: its space and the timed workload."""

    space: DesignSpace | None = None
    seq_len: int = 30
    beam: int = 5


def context_from_settings(settings: dict) -> FeatureContext:
    """The feature context of a dataset's settings (`predictor.data.data_settings`)."""
    space = None
    name = settings.get("space")
    if name:
        try:
            space = load_space(str(name))
        except SpaceError as exc:
            log.warning("space %r of the data is unknown (%s); using features without it", name, exc)
    return FeatureContext(space=space, seq_len=int(settings.get("seq_len", 30)),
                          beam=int(settings.get("beam", 5)))


@dataclass(frozen=True)
class ArchArrays:
    """Architectures as integer arrays; per-layer genes are zero past a row's layer count."""

    enc_embed: np.ndarray
    enc_layers: np.ndarray
    dec_embed: np.ndarray
    dec_layers: np.ndarray
    enc_ffn: np.ndarray
    enc_heads: np.ndarray
    dec_ffn: np.ndarray
    dec_heads: np.ndarray
    dec_ende_heads: np.ndarray
    dec_ende_codes: np.ndarray

    @property
    def dec_ende_layers(self) -> np.ndarray:
        """Attended encoder layers per decoder layer (`ENDE_ATTN_LAYERS`), padding -> 0."""
        layers = np.zeros_like(self.dec_ende_codes)
        for code, count in ENDE_ATTN_LAYERS.items():
            layers[self.dec_ende_codes == code] = count
        return layers


def encode_archs(archs: Sequence[ArchConfig], max_enc: int, max_dec: int) -> ArchArrays:
    """Pack architectures into an `ArchArrays` padded to `max_enc`/`max_dec` layers."""
    n = len(archs)
    scalars = [np.fromiter(map(attrgetter(gene), archs), dtype=np.int64, count=n)
               for gene in SCALAR_GENES]
    per_layer = []
    for genes, layers, width in ((ENCODER_LAYER_GENES, scalars[1], max_enc),
                                 (DECODER_LAYER_GENES, scalars[3], max_dec)):
        if n and layers.max() > width:
            raise SpaceError(_too_deep(archs, max_enc, max_dec))
        active = np.arange(width) < layers[:, None]
        for gene in genes:
            values = np.zeros((n, width), dtype=np.int64)
            # Row-major boolean assignment fills each row's active layers in order.
            values[active] = np.fromiter(chain.from_iterable(map(attrgetter(gene), archs)),
                                         dtype=np.int64, count=int(layers.sum()))
            per_layer.append(values)
    return ArchArrays(*scalars, *per_layer)


def _too_deep(archs: Sequence[ArchConfig], max_enc: int, max_dec: int) -> str:
    for i, a in enumerate(archs):
        if a.encoder_layer_num > max_enc or a.decoder_layer_num > max_dec:
            return (f"architecture #{i} ({a.arch_id}) has {a.encoder_layer_num} encoder and "
                    f"{a.decoder_layer_num} decoder layers; the predictor's space allows at most "
                    f"{max_enc} and {max_dec}")
    raise AssertionError("no architecture exceeds the layer limits")


def check_in_space(batch: ArchArrays, archs: Sequence[ArchConfig], space: DesignSpace) -> None:
    """Raise `SpaceError` naming the first architecture with a gene outside `space`."""
    bad = np.zeros(len(archs), dtype=bool)
    for gene, values in zip(SCALAR_GENES, (batch.enc_embed, batch.enc_layers,
                                           batch.dec_embed, batch.dec_layers)):
        bad |= ~np.isin(values, space.choices(gene))
    for genes, arrays, layers in (
            (ENCODER_LAYER_GENES, (batch.enc_ffn, batch.enc_heads), batch.enc_layers),
            (DECODER_LAYER_GENES, (batch.dec_ffn, batch.dec_heads, batch.dec_ende_heads,
                                   batch.dec_ende_codes), batch.dec_layers)):
        active = np.arange(arrays[0].shape[1]) < layers[:, None]
        for gene, values in zip(genes, arrays):
            bad |= (active & ~np.isin(values, space.choices(gene))).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        try:
            archs[i].validate(space)
        except SpaceError as exc:
            raise SpaceError(f"architecture #{i} ({archs[i].arch_id}) is outside the predictor's "
                             f"space: {exc}") from None


def hat_raw(batch: ArchArrays) -> np.ndarray:
    """HAT's 10 features, unnormalised (equal to `ArchConfig.hat_features`)."""
    el, dl = batch.enc_layers, batch.dec_layers
    return np.column_stack([
        batch.enc_embed, el, batch.enc_ffn.sum(1) / el, batch.enc_heads.sum(1) / el,
        batch.dec_embed, dl, batch.dec_ffn.sum(1) / dl, batch.dec_heads.sum(1) / dl,
        batch.dec_ende_heads.sum(1) / dl, batch.dec_ende_layers.sum(1) / dl,
    ]).astype(np.float64)


def check_hat_in_space(raw: np.ndarray, space: DesignSpace) -> None:
    """Raise `SpaceError` for HAT feature rows that no architecture of `space` can have."""
    limits = {
        0: space.encoder_embed_dim, 1: space.encoder_layer_num, 2: space.encoder_ffn_embed_dim,
        3: space.encoder_self_attention_heads, 4: space.decoder_embed_dim,
        5: space.decoder_layer_num, 6: space.decoder_ffn_embed_dim,
        7: space.decoder_self_attention_heads, 8: space.decoder_ende_attention_heads,
        9: tuple(1 if c == -1 else c + 1 for c in space.decoder_arbitrary_ende_attn),
    }
    for j, choices in limits.items():
        values = raw[:, j]
        if j in (0, 1, 4, 5):
            bad = ~np.isin(values, choices)
        else:  # averages over layers lie between the smallest and largest choice
            bad = (values < min(choices) - 1e-9) | (values > max(choices) + 1e-9)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SpaceError(f"row {i}: {HAT_FEATURES[j]}={values[i]:g} is outside the predictor's "
                             f"space {space.name!r} (choices: {', '.join(map(str, choices))})")


def hat_cost(raw: np.ndarray) -> np.ndarray:
    """Normalised HAT features plus their cost products ("hat-cost")."""
    v = raw / _NORM
    products = [np.prod(v[:, list(idx)], axis=1) for _, idx in _COST_PRODUCTS]
    return np.column_stack([v] + products)


def cost_counts(batch: ArchArrays, space: DesignSpace, seq_len: int, beam: int) -> dict[str, np.ndarray]:
    """MACs and parameters per part, vectorised; identical to `profiler.cost`'s counts."""
    return _counts(batch.enc_embed, batch.enc_layers, batch.dec_embed, batch.dec_layers, batch.enc_ffn.sum(1),
                   batch.dec_ffn.sum(1), batch.dec_ende_layers.sum(1), space, seq_len, beam)


def hat_counts(raw: np.ndarray, space: DesignSpace, seq_len: int, beam: int) -> dict[str, np.ndarray]:
    """`cost_counts` from HAT's 10 raw features: the layer sums it needs are average x layers."""
    integer = np.rint(raw).astype(np.int64)
    el, dl = integer[:, 1], integer[:, 5]
    return _counts(integer[:, 0], el, integer[:, 4], dl, np.rint(raw[:, 2] * el).astype(np.int64),
                   np.rint(raw[:, 6] * dl).astype(np.int64), np.rint(raw[:, 9] * dl).astype(np.int64),
                   space, seq_len, beam)


def _counts(e: np.ndarray, el: np.ndarray, d: np.ndarray, dl: np.ndarray, enc_ffn: np.ndarray,
            dec_ffn: np.ndarray, ende: np.ndarray, space: DesignSpace, seq_len: int,
            beam: int) -> dict[str, np.ndarray]:
    """MACs and parameters per part from embedding widths, layer counts and the layer sums of
    FFN widths and attended encoder layers."""
    q, s = space.qkv_dim, seq_len
    cached = s * (s + 1) // 2
    macs_enc = el * (4 * s * e * q + 2 * s * s * q) + 2 * s * e * enc_ffn
    cross_kv = 2 * s * e * q * ende
    steps = beam * (s * (6 * d * q * dl + 2 * s * q * ende + 2 * d * dec_ffn) + 2 * cached * q * dl)
    output = beam * s * d * space.tgt_vocab

    def attention(query: np.ndarray, key: np.ndarray) -> np.ndarray:
        return (query + 1) * q + 2 * (key + 1) * q + (q + 1) * query

    params_enc = el * (attention(e, e) + e + 4 * e) + (2 * e + 1) * enc_ffn + 2 * e
    params_dec = (dl * (attention(d, d) + attention(d, e) + d + 6 * d)
                  + (2 * d + 1) * dec_ffn + 2 * d)
    return {
        "macs_encoder": macs_enc, "macs_decoder": cross_kv + steps + output, "macs_output": output,
        "params_encoder": params_enc, "params_decoder": params_dec,
        "params_embeddings": space.src_vocab * e + space.tgt_vocab * d,
    }


def arch_features(batch: ArchArrays, ctx: FeatureContext) -> np.ndarray:
    """The "arch" feature set."""
    counts = cost_counts(batch, ctx.space, ctx.seq_len, ctx.beam)
    per_layer = [batch.enc_ffn / _NORM[2], batch.enc_heads / _NORM[3],
                 batch.dec_ffn / _NORM[6], batch.dec_heads / _NORM[7],
                 batch.dec_ende_heads / _NORM[8], batch.dec_ende_layers / _NORM[9]]
    scaled = [counts[f"macs_{p}"] / 1e9 for p in ("encoder", "decoder", "output")]
    scaled += [counts[f"params_{p}"] / 1e6 for p in ("encoder", "decoder", "embeddings")]
    return np.column_stack([hat_cost(hat_raw(batch))] + per_layer + scaled)


def hat_macs(raw: np.ndarray, ctx: FeatureContext) -> np.ndarray:
    """The "hat-macs" feature set of HAT's 10 raw features."""
    counts = hat_counts(raw, _space_of("hat-macs", ctx), ctx.seq_len, ctx.beam)
    return np.column_stack([hat_cost(raw), counts["macs_encoder"] / 1e9, counts["macs_decoder"] / 1e9])


def feature_names(name: str, ctx: FeatureContext) -> list[str]:
    """Column names of a feature set (for metadata and inspection)."""
    names = [f"{f}/{n:g}" for f, n in zip(HAT_FEATURES, HAT_FEATURE_NORM)]
    if name == "hat":
        return names
    names += [n for n, _ in _COST_PRODUCTS]
    if name == "hat-cost":
        return names
    if name == "hat-macs":
        return names + list(_PART_MACS)
    if name != "arch":
        raise PredictorError(f"unknown feature set {name!r} (known: {', '.join(FEATURE_SETS)})")
    max_enc, max_dec = _max_layers(name, ctx)
    for gene in ("encoder_ffn", "encoder_heads"):
        names += [f"{gene}[{i}]" for i in range(max_enc)]
    for gene in ("decoder_ffn", "decoder_heads", "decoder_ende_heads", "decoder_ende_layers"):
        names += [f"{gene}[{i}]" for i in range(max_dec)]
    return names + list(_COST_COUNTS)


def _space_of(name: str, ctx: FeatureContext) -> DesignSpace:
    if ctx.space is None:
        raise PredictorError(f"feature set {name!r} needs the design space of the data")
    return ctx.space


def _max_layers(name: str, ctx: FeatureContext) -> tuple[int, int]:
    space = _space_of(name, ctx)
    return max(space.encoder_layer_num), max(space.decoder_layer_num)


def from_archs(name: str, archs: Sequence[ArchConfig], ctx: FeatureContext) -> np.ndarray:
    """Feature matrix of architectures; each is checked against the context's space."""
    if name not in FEATURE_SETS:
        raise PredictorError(f"unknown feature set {name!r} (known: {', '.join(FEATURE_SETS)})")
    if not len(archs):
        return np.empty((0, len(feature_names(name, ctx))))
    if name == "arch" or ctx.space is not None:
        max_enc, max_dec = _max_layers(name, ctx)
    else:
        max_enc = max(a.encoder_layer_num for a in archs)
        max_dec = max(a.decoder_layer_num for a in archs)
    batch = encode_archs(archs, max_enc, max_dec)
    if ctx.space is not None:
        check_in_space(batch, archs, ctx.space)
    if name == "arch":
        return arch_features(batch, ctx)
    return _from_hat_raw(name, hat_raw(batch), ctx)


def parse_archs(df: pd.DataFrame) -> list[ArchConfig]:
    """The `arch` column as `ArchConfig`s; a bad cell is an error naming its row."""
    archs = []
    for index, text in df[ARCH_COLUMN].items():
        try:
            archs.append(ArchConfig.from_json(str(text)))
        except SpaceError as exc:
            raise PredictorError(f"row {index}: bad architecture in the arch column: {exc}") from None
    return archs


def from_frame(name: str, df: pd.DataFrame, ctx: FeatureContext) -> np.ndarray:
    """Feature matrix of latency rows: from the `arch` column when every row has it,
    else (every feature set but "arch") from HAT's 10 feature columns."""
    if has_arch(df):
        return from_archs(name, parse_archs(df), ctx)
    if name == "arch":
        raise PredictorError("this predictor uses the 'arch' feature set, which needs every row's "
                             "architecture; the data has no complete 'arch' column "
                             "(rows imported from HAT's files have features only)")
    if not has_hat_features(df):
        raise PredictorError("data has neither complete 'arch' cells nor HAT's 10 feature columns")
    raw = df[list(HAT_FEATURES)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    if ctx.space is not None:
        check_hat_in_space(raw, ctx.space)
    return _from_hat_raw(name, raw, ctx)


def _from_hat_raw(name: str, raw: np.ndarray, ctx: FeatureContext) -> np.ndarray:
    """The feature sets computable from HAT's 10 raw features."""
    if name == "hat":
        return raw / _NORM
    return hat_macs(raw, ctx) if name == "hat-macs" else hat_cost(raw)


def richest_set(df: pd.DataFrame, ctx: FeatureContext) -> str:
    """"arch" when the data has full architectures and a known space, else "hat-cost"."""
    return "arch" if has_arch(df) and ctx.space is not None else "hat-cost"

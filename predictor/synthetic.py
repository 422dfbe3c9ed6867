"""Generated latency rows, for tests and benchmarks only, never for real predictors.

Latency follows a simple device model: a fixed cost per operator launch plus MACs at a
throughput that falls for narrow matrices, with multiplicative noise. Two profiles
stand for two kinds of device, so transfer to new hardware can be exercised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.space import load_space
from profiler.vocabulary import HAT_FEATURES

from predictor.features import cost_counts, encode_archs, hat_raw


@dataclass(frozen=True)
class DeviceProfile:
    """Operator launch cost (us), peak GMAC/s, the width at which half the peak is
    reached, and the noise (relative standard deviation)."""

    name: str
    launch_us: float
    peak_gmacs: float
    half_width: float
    noise: float = 0.02


PROFILES = {
    "synthetic-desktop": DeviceProfile("synthetic-desktop", launch_us=6.0, peak_gmacs=60.0,
                                       half_width=96.0),
    "synthetic-pi": DeviceProfile("synthetic-pi", launch_us=22.0, peak_gmacs=6.0,
                                  half_width=192.0, noise=0.03),
}
#: Operators launched per layer per run (attention + FFN + norms), a rough count.
_ENCODER_OPS, _DECODER_OPS = 14, 24


def synthetic_frame(n: int, seed: int = 0, device: str = "synthetic-desktop",
                    space: str = "compact", seq_len: int = 30, beam: int = 5,
                    hat_only: bool = False) -> pd.DataFrame:
    """`n` distinct architectures of `space` with generated latencies (ms).

    With `hat_only`, the frame has HAT's 14 columns only, as HAT's published files do.
    """
    profile = PROFILES[device]
    design = load_space(space)
    archs = design.sample_many(n, seed)
    g = encode_archs(archs, max(design.encoder_layer_num), max(design.decoder_layer_num))
    counts = cost_counts(g, design, seq_len, beam)
    rng = np.random.default_rng(seed + 7919)

    def ms(macs: np.ndarray, width: np.ndarray, ops: np.ndarray) -> np.ndarray:
        efficiency = width / (width + profile.half_width)
        compute = macs / (profile.peak_gmacs * 1e9 * efficiency) * 1e3
        launches = ops * profile.launch_us * 1e-3
        return (compute + launches) * rng.lognormal(0.0, profile.noise, len(macs))

    heads = g.enc_heads.sum(1), g.dec_heads.sum(1) + g.dec_ende_heads.sum(1)
    encoder = ms(counts["macs_encoder"], g.enc_embed, g.enc_layers * _ENCODER_OPS + heads[0])
    decoder = ms(counts["macs_decoder"], g.dec_embed,
                 seq_len * (g.dec_layers * _DECODER_OPS + heads[1] + 3))
    frame = pd.DataFrame(hat_raw(g), columns=list(HAT_FEATURES))
    frame["latency_mean_encoder"] = encoder
    frame["latency_mean_decoder"] = decoder
    frame["latency_std_encoder"] = encoder * profile.noise
    frame["latency_std_decoder"] = decoder * profile.noise
    if hat_only:
        return frame
    frame["latency_ms"] = encoder + decoder
    frame["arch_id"] = [a.arch_id for a in archs]
    frame["arch"] = [a.canonical_json() for a in archs]
    frame["space"] = space
    frame["device"] = device
    frame["seq_len"] = seq_len
    frame["beam"] = beam
    return frame

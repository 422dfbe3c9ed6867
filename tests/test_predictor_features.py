"""Feature extraction: vectorised counts agree with profiler.cost, HAT's features agree
with ArchConfig.hat_features, and architectures outside the space are refused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiler.cost import count_macs, count_params
from profiler.errors import PredictorError, SpaceError
from profiler.space import HAT_FEATURE_NORM, HAT_FEATURES, ArchConfig, load_space
from predictor import features as F

SPACE = load_space("compact")


@pytest.fixture(scope="module")
def archs() -> list[ArchConfig]:
    return SPACE.sample_many(120, seed=3) + [SPACE.largest(), SPACE.smallest()]


def test_cost_counts_equal_profiler_cost(archs):
    genome = F.encode_archs(archs, 4, 4)
    for seq_len, beam in ((30, 5), (7, 2)):
        counts = F.cost_counts(genome, SPACE, seq_len, beam)
        for i, arch in enumerate(archs):
            macs = count_macs(arch, SPACE, seq_len, beam)
            params = count_params(arch, SPACE)
            assert counts["macs_encoder"][i] == macs["encoder"]
            assert counts["macs_decoder"][i] == macs["decoder"]
            assert counts["macs_output"][i] == macs["output_projection"]
            assert counts["params_encoder"][i] == params["encoder"]
            assert counts["params_decoder"][i] == params["decoder"]
            assert counts["params_embeddings"][i] == params["embeddings"]


def test_hat_features_equal_arch_hat_features(archs):
    raw = F.hat_raw(F.encode_archs(archs, 4, 4))
    assert raw.tolist() == [a.hat_features() for a in archs]
    hat = F.from_archs("hat", archs, F.FeatureContext(SPACE))
    np.testing.assert_array_equal(hat, raw / np.asarray(HAT_FEATURE_NORM))


def test_genome_keeps_per_layer_order_and_pads_with_zeros():
    arch = ArchConfig.from_dict({
        "encoder_embed_dim": 128, "encoder_layer_num": 3,
        "encoder_ffn_embed_dim": [1024, 256, 512], "encoder_self_attention_heads": [4, 2, 2],
        "decoder_embed_dim": 192, "decoder_layer_num": 2, "decoder_ffn_embed_dim": [256, 1024],
        "decoder_self_attention_heads": [2, 4], "decoder_ende_attention_heads": [4, 2],
        "decoder_arbitrary_ende_attn": [2, -1]})
    g = F.encode_archs([arch], 4, 4)
    assert g.enc_ffn.tolist() == [[1024, 256, 512, 0]]
    assert g.dec_ffn.tolist() == [[256, 1024, 0, 0]]
    assert g.dec_ende_layers.tolist() == [[3, 1, 0, 0]]


def test_feature_names_match_matrix_width(archs):
    ctx = F.FeatureContext(SPACE)
    for name in F.FEATURE_SETS:
        X = F.from_archs(name, archs, ctx)
        assert X.shape == (len(archs), len(F.feature_names(name, ctx)))
        assert np.isfinite(X).all()


def test_hat_cost_from_columns_equals_hat_cost_from_archs(archs):
    frame = pd.DataFrame([a.hat_features() for a in archs], columns=list(HAT_FEATURES))
    ctx = F.FeatureContext(SPACE)
    np.testing.assert_allclose(F.from_frame("hat-cost", frame, ctx),
                               F.from_archs("hat-cost", archs, ctx), rtol=1e-12)


def test_hat_macs_from_columns_are_the_exact_counts(archs):
    """HAT's averages lose the per-layer order but not the layer sums the counts need: the
    MACs from HAT's columns equal `profiler.cost`'s for every architecture."""
    frame = pd.DataFrame([a.hat_features() for a in archs], columns=list(HAT_FEATURES))
    ctx = F.FeatureContext(SPACE, seq_len=7, beam=2)
    X = F.from_frame("hat-macs", frame, ctx)
    names = F.feature_names("hat-macs", ctx)
    for i, arch in enumerate(archs):
        macs = count_macs(arch, SPACE, 7, 2)
        assert X[i, names.index("gmacs_encoder")] * 1e9 == pytest.approx(macs["encoder"], rel=1e-12)
        assert X[i, names.index("gmacs_decoder")] * 1e9 == pytest.approx(macs["decoder"], rel=1e-12)
    np.testing.assert_allclose(X, F.from_archs("hat-macs", archs, ctx), rtol=1e-12)


def test_arch_outside_space_names_the_gene(archs):
    wide = ArchConfig.from_dict({**archs[0].to_dict(), "decoder_embed_dim": 640})
    with pytest.raises(SpaceError, match=r"architecture #1 .*outside the predictor's space"
                                         r".*decoder_embed_dim=640"):
        F.from_archs("arch", [archs[1], wide], F.FeatureContext(SPACE))


def test_arch_with_too_many_layers_is_refused():
    deep = load_space("hat-latency").sample_many(1, seed=1)[0]  # 6 encoder layers
    with pytest.raises(SpaceError, match="at most 4 and 4"):
        F.from_archs("hat", [deep], F.FeatureContext(SPACE))


def test_hat_rows_outside_space_are_refused():
    frame = pd.DataFrame([[640, 6, 2048, 8, 640, 6, 2048, 8, 8, 2]], columns=list(HAT_FEATURES))
    with pytest.raises(SpaceError, match="encoder_embed_dim=640"):
        F.from_frame("hat", frame, F.FeatureContext(SPACE))


def test_arch_features_need_the_arch_column(archs):
    frame = pd.DataFrame([a.hat_features() for a in archs[:3]], columns=list(HAT_FEATURES))
    with pytest.raises(PredictorError, match="needs every row's architecture"):
        F.from_frame("arch", frame, F.FeatureContext(SPACE))


def test_without_space_hat_features_still_work(archs):
    X = F.from_archs("hat-cost", archs[:5], F.FeatureContext(None))
    assert X.shape[0] == 5
    for name in ("arch", "hat-macs"):
        with pytest.raises(PredictorError, match="needs the design space"):
            F.from_archs(name, archs[:5], F.FeatureContext(None))

"""One vocabulary: the genes, the attention coding, the columns and the error codes agree
with every package that uses them."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from device_agents.wire import ERROR_STATUS, RETRYABLE, WireError
from predictor.features import encode_archs, hat_raw
from profiler.dataset import COLUMNS
from profiler.errors import ErrorCode
from profiler.space import ArchConfig, load_space
from profiler.vocabulary import (DECODER_LAYER_GENES, ENCODER_LAYER_GENES, ENDE_ATTN_LAYERS, GENES, HAT_COLUMNS,
                                 HAT_FEATURES, SCALAR_GENES)


def test_the_genes_are_the_fields_of_an_architecture():
    fields = [f.name for f in dataclasses.fields(ArchConfig) if f.init]
    assert sorted(GENES) == sorted(fields) and len(set(GENES)) == 10
    arch = load_space("compact").largest()
    assert all(isinstance(getattr(arch, g), int) for g in SCALAR_GENES)
    assert all(len(getattr(arch, g)) == arch.encoder_layer_num for g in ENCODER_LAYER_GENES)
    assert all(len(getattr(arch, g)) == arch.decoder_layer_num for g in DECODER_LAYER_GENES)


def test_the_attention_coding_is_hats_and_both_encodings_follow_it():
    assert ENDE_ATTN_LAYERS == {-1: 1, 1: 2, 2: 3}  # HAT: the last 1, 2 or 3 encoder layers
    arch = ArchConfig(encoder_embed_dim=512, encoder_layer_num=6, encoder_ffn_embed_dim=(1024,) * 6,
                      encoder_self_attention_heads=(4,) * 6, decoder_embed_dim=512, decoder_layer_num=3,
                      decoder_ffn_embed_dim=(1024,) * 3, decoder_self_attention_heads=(4,) * 3,
                      decoder_ende_attention_heads=(4,) * 3, decoder_arbitrary_ende_attn=(-1, 1, 2))
    assert arch.ende_layers == (1, 2, 3)
    batch = encode_archs([arch], max_enc=6, max_dec=6)
    np.testing.assert_array_equal(batch.dec_ende_layers, [[1, 2, 3, 0, 0, 0]])  # padding counts 0
    assert hat_raw(batch)[0, HAT_FEATURES.index("decoder_arbitrary_ende_attn_avg")] == 2.0
    assert hat_raw(batch)[0].tolist() == arch.hat_features()


def test_a_dataset_starts_with_hats_columns():
    assert COLUMNS[:len(HAT_COLUMNS)] == HAT_COLUMNS and len(HAT_COLUMNS) == 14


def test_every_wire_code_is_an_error_code_and_travels_as_its_string():
    assert set(ERROR_STATUS) <= set(ErrorCode) and RETRYABLE <= set(ERROR_STATUS)
    assert ERROR_STATUS["timeout"] == 504  # plain strings from the wire still look up
    body = json.loads(json.dumps(WireError(ErrorCode.TIMEOUT, "too slow").body()))
    assert body == {"error": {"code": "timeout", "message": "too slow"}}
    assert f"{ErrorCode.EXPORT_FAILED}" == "export_failed" and ErrorCode("measure_failed") is ErrorCode.MEASURE_FAILED

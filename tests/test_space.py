from __future__ import annotations

import json
import random

import numpy as np
import pytest

from profiler.errors import SpaceError
from profiler.space import (BUILTIN_SPACES, HAT_FEATURES, ArchConfig, DesignSpace, load_space)


def hat_get_config_features(config: dict) -> list[float]:
    """HAT's own feature code (utils.get_config_features), transcribed: the independent reference."""
    features = [config["encoder"]["encoder_embed_dim"]]
    enc_layers = config["encoder"]["encoder_layer_num"]
    features.append(enc_layers)
    features.append(np.mean(config["encoder"]["encoder_ffn_embed_dim"][:enc_layers]))
    features.append(np.mean(config["encoder"]["encoder_self_attention_heads"][:enc_layers]))
    features.append(config["decoder"]["decoder_embed_dim"])
    dec_layers = config["decoder"]["decoder_layer_num"]
    features.append(dec_layers)
    features.append(np.mean(config["decoder"]["decoder_ffn_embed_dim"][:dec_layers]))
    features.append(np.mean(config["decoder"]["decoder_self_attention_heads"][:dec_layers]))
    features.append(np.mean(config["decoder"]["decoder_ende_attention_heads"][:dec_layers]))
    trans = []
    for code in config["decoder"]["decoder_arbitrary_ende_attn"][:dec_layers]:
        trans.append({-1: 1, 1: 2, 2: 3}[code])
    features.append(np.mean(trans))
    return [float(f) for f in features]


HAT_CONFIG = {  # a HAT-style config: per-layer genes listed for 6 layers, 2 decoder layers active
    "encoder": {
        "encoder_embed_dim": 640, "encoder_layer_num": 6,
        "encoder_ffn_embed_dim": [3072, 2048, 1024, 3072, 2048, 1024],
        "encoder_self_attention_heads": [8, 4, 8, 4, 8, 8],
    },
    "decoder": {
        "decoder_embed_dim": 512, "decoder_layer_num": 2,
        "decoder_ffn_embed_dim": [1024, 3072, 2048, 2048, 2048, 2048],
        "decoder_self_attention_heads": [4, 8, 8, 8, 8, 8],
        "decoder_ende_attention_heads": [8, 8, 4, 4, 4, 4],
        "decoder_arbitrary_ende_attn": [2, -1, 1, 1, 1, 1],
    },
}


def test_hat_nested_form_and_features_match_hat_code():
    arch = ArchConfig.from_dict(HAT_CONFIG).validate(load_space("wmt14.en-de"))
    assert arch.decoder_ffn_embed_dim == (1024, 3072)
    assert arch.hat_features() == hat_get_config_features(HAT_CONFIG)
    assert len(HAT_FEATURES) == 10


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_sampled_features_match_hat_code(name):
    space = load_space(name)
    for arch in space.sample_many(20, seed=3):
        d = arch.to_dict()
        nested = {"encoder": {k: v for k, v in d.items() if k.startswith("encoder")},
                  "decoder": {k: v for k, v in d.items() if k.startswith("decoder")}}
        assert arch.hat_features() == pytest.approx(hat_get_config_features(nested))
        assert arch.validate(space) is arch


def test_sampling_is_seeded_distinct_and_covers_choices():
    space = load_space("compact")
    a = space.sample_many(200, seed=7)
    assert [x.arch_id for x in a] == [x.arch_id for x in space.sample_many(200, seed=7)]
    assert [x.arch_id for x in a] != [x.arch_id for x in space.sample_many(200, seed=8)]
    assert len({x.arch_id for x in a}) == 200
    assert {x.decoder_layer_num for x in a} == set(space.decoder_layer_num)
    assert {f for x in a for f in x.encoder_ffn_embed_dim} == set(space.encoder_ffn_embed_dim)
    assert {c for x in a for c in x.decoder_arbitrary_ende_attn} == {-1, 1, 2}


def test_arch_id_is_hash_of_canonical_json_and_roundtrips():
    space = load_space("compact")
    arch = space.sample(random.Random(0))
    again = ArchConfig.from_json(json.dumps(arch.to_dict()))
    assert again == arch and again.arch_id == arch.arch_id
    import hashlib
    assert arch.arch_id == hashlib.sha256(arch.canonical_json().encode()).hexdigest()[:16]
    other = ArchConfig.from_dict({**arch.to_dict(), "encoder_embed_dim": 999})
    assert other.arch_id != arch.arch_id


def test_out_of_space_error_names_the_field():
    space = load_space("compact")
    d = space.largest().to_dict()
    d["decoder_ffn_embed_dim"][1] = 4096
    with pytest.raises(SpaceError, match=r"decoder_ffn_embed_dim\[1\]=4096"):
        ArchConfig.from_dict(d).validate(space)


@pytest.mark.parametrize("patch, message", [
    ({"decoder_ffn_embed_dim": [256, 256, 256]}, "decoder_ffn_embed_dim has 3 entries for 4 layers"),
    ({"encoder_embed_dim": "256"}, "encoder_embed_dim must be a positive integer"),
    ({"bogus": 1}, "unknown architecture field"),
    ({"decoder_arbitrary_ende_attn": [0, 1, 2, -1]}, "must be -1, 1 or 2"),
])
def test_invalid_arch_is_refused(patch, message):
    d = {**load_space("compact").largest().to_dict(), **patch}
    with pytest.raises(SpaceError, match=message):
        ArchConfig.from_dict(d)


def test_arbitrary_attention_needs_enough_encoder_layers():
    d = load_space("compact").smallest().to_dict()
    d.update(encoder_layer_num=2, encoder_ffn_embed_dim=[256, 256],
             encoder_self_attention_heads=[2, 2], decoder_arbitrary_ende_attn=[2])
    with pytest.raises(SpaceError, match="needs 3 encoder layers"):
        ArchConfig.from_dict(d)


def test_space_from_yaml_and_json_files(tmp_path):
    spec = load_space("compact").to_dict()
    del spec["name"]
    (tmp_path / "tiny.json").write_text(json.dumps(spec))
    import yaml
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    for f in ("tiny.json", "tiny.yaml"):
        space = load_space(str(tmp_path / f))
        assert space.name == "tiny"
        assert space.to_dict() == {**spec, "name": "tiny"}


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot parse"),
    ('{"name": "x"}', "missing field"),
    ('{"name": "x", "extra": 1}', "unknown design-space field"),
])
def test_bad_space_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpaceError, match=message):
        load_space(str(path))


def test_unknown_space_lists_builtins():
    with pytest.raises(SpaceError, match="compact"):
        load_space("nope")


def test_space_validation():
    spec = load_space("compact").to_dict()
    with pytest.raises(SpaceError, match="does not divide qkv_dim"):
        DesignSpace.from_dict({**spec, "decoder_self_attention_heads": [3]})
    with pytest.raises(SpaceError, match="at least 3"):
        DesignSpace.from_dict({**spec, "encoder_layer_num": [2]})


def test_largest_and_smallest():
    space = load_space("wmt14.en-de")
    big, small = space.largest(), space.smallest()
    assert big.decoder_layer_num == 6 and set(big.encoder_ffn_embed_dim) == {3072}
    assert small.decoder_layer_num == 1 and small.encoder_embed_dim == 512

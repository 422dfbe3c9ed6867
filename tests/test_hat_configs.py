"""HAT's published SubTransformer configs (YAML) read as architectures."""
from __future__ import annotations

from pathlib import Path

import pytest

from profiler.errors import SpaceError
from profiler.hat_configs import arch_from_hat_config, read_hat_config
from profiler.space import HAT_FEATURES, ArchConfig, load_space

#: Faithful copies of two files of mit-han-lab/hardware-aware-transformers, configs/*/subtransformer/.
HAT_CONFIGS = Path(__file__).parent / "data" / "hat_configs"
PI_6_9S = HAT_CONFIGS / "HAT_wmt14ende_raspberrypi@6.9s_bleu@28.4.yml"
IWSLT_45MS = HAT_CONFIGS / "HAT_iwslt14deen_titanxp@45.6ms_bleu@33.4.yml"


def test_hats_raspberry_pi_model_is_read_gene_by_gene():
    arch = read_hat_config(PI_6_9S)
    assert arch == ArchConfig(
        encoder_embed_dim=512, encoder_layer_num=6, encoder_ffn_embed_dim=(3072,) * 6,
        encoder_self_attention_heads=(8, 4, 8, 8, 8, 8), decoder_embed_dim=512, decoder_layer_num=5,
        decoder_ffn_embed_dim=(2048, 2048, 3072, 3072, 2048), decoder_self_attention_heads=(8, 8, 8, 4, 8),
        decoder_ende_attention_heads=(4, 8, 8, 8, 8), decoder_arbitrary_ende_attn=(-1, 1, 1, 1, -1))
    assert arch.validate(load_space("wmt14.en-de")) is arch
    # HAT's features: -1/1/1/1/-1 attend to 1/2/2/2/1 encoder layers
    assert arch.hat_features() == [512, 6, 3072, 7.333333333333333, 512, 5, 2457.6, 7.2, 7.2, 1.6]


def test_hats_iwslt_model_lies_in_the_iwslt_space_only():
    arch = read_hat_config(IWSLT_45MS)
    assert arch.decoder_layer_num == 1 and arch.encoder_self_attention_heads == (4, 4, 2, 4, 4, 4)
    arch.validate(load_space("iwslt14.de-en"))
    with pytest.raises(SpaceError, match="encoder_self_attention_heads"):
        arch.validate(load_space("wmt14.en-de"))


def _hat_dict(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_lists_longer_than_the_layer_count_are_cut_as_hat_cuts_them():
    data = _hat_dict(IWSLT_45MS)
    for key in ("decoder-ffn-embed-dim-all-subtransformer", "decoder-self-attention-heads-all-subtransformer",
                "decoder-ende-attention-heads-all-subtransformer"):
        data[key] = data[key] * 6
    data["decoder-arbitrary-ende-attn-all-subtransformer"] = [-1, 2, 2, 2, 2, 2]
    assert arch_from_hat_config(data) == read_hat_config(IWSLT_45MS)


def test_training_options_beside_the_genes_are_ignored():
    data = {**_hat_dict(PI_6_9S), "train-subtransformer": True, "arch": "transformersuper_wmt_en_de",
            "max-tokens": 4096}
    assert arch_from_hat_config(data) == read_hat_config(PI_6_9S)


def test_broken_configs_are_refused_with_the_key_or_file_named(tmp_path):
    data = _hat_dict(PI_6_9S)
    del data["decoder-arbitrary-ende-attn-all-subtransformer"]
    with pytest.raises(SpaceError, match="decoder-arbitrary-ende-attn-all-subtransformer"):
        arch_from_hat_config(data)
    with pytest.raises(SpaceError, match="decoder_ffn_embed_dim has 1 entries for 5 layers"):
        arch_from_hat_config({**_hat_dict(PI_6_9S), "decoder-ffn-embed-dim-all-subtransformer": [3072]})
    with pytest.raises(SpaceError, match="not a HAT SubTransformer config"):
        arch_from_hat_config({"encoder_embed_dim": 512})
    bad = tmp_path / "bad.yml"
    bad.write_text("encoder-embed-dim-subtransformer: [512\n")
    with pytest.raises(SpaceError, match="bad.yml"):
        read_hat_config(bad)
    with pytest.raises(SpaceError, match="cannot read"):
        read_hat_config(tmp_path / "absent.yml")
    listing = tmp_path / "list.yml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(SpaceError, match="not a HAT SubTransformer config"):
        read_hat_config(listing)


def test_hatprof_measure_times_hats_published_iwslt_model(tmp_path):
    """`hatprof measure --archs HAT.yml`: the row is HAT's architecture, timed with IWSLT's 23-token source."""
    import csv

    from click.testing import CliRunner

    from hatprof.cli import cli

    out = tmp_path / "hat.csv"
    result = CliRunner().invoke(cli, ["measure", "--archs", str(IWSLT_45MS), "--space", "iwslt14.de-en",
                                      "--out", str(out), "--fixed", "--runs", "6", "--rounds", "1",
                                      "--warmup", "1", "--canary-every", "0"])
    assert result.exit_code == 0, result.output
    with out.open() as f:
        (row,) = list(csv.DictReader(f))
    arch = read_hat_config(IWSLT_45MS)
    assert row["arch_id"] == arch.arch_id and row["space"] == "iwslt14.de-en"
    assert int(row["seq_len"]) == 23 and int(row["beam"]) == 5  # HAT's IWSLT latency workload
    assert [float(row[name]) for name in HAT_FEATURES] == arch.hat_features()
    assert float(row["latency_mean_encoder"]) > 0 and float(row["latency_mean_decoder"]) > 0


#: HAT's format, with genes of the compact space (quick to export).
COMPACT_HAT_CONFIG = """\
encoder-embed-dim-subtransformer: 128
decoder-embed-dim-subtransformer: 128

encoder-ffn-embed-dim-all-subtransformer: [256, 512, 256]
decoder-ffn-embed-dim-all-subtransformer: [256, 256, 256, 256, 256, 256]

encoder-layer-num-subtransformer: 3
decoder-layer-num-subtransformer: 2

encoder-self-attention-heads-all-subtransformer: [2, 4, 2]
decoder-self-attention-heads-all-subtransformer: [2, 2, 2, 2, 2, 2]
decoder-ende-attention-heads-all-subtransformer: [4, 4, 4, 4, 4, 4]

decoder-arbitrary-ende-attn-all-subtransformer: [-1, 2, -1, -1, -1, -1]
"""


def test_hatprof_export_reads_a_hat_config(tmp_path):
    import json

    from click.testing import CliRunner

    from hatprof.cli import cli

    config = tmp_path / "HAT_compact.yml"
    config.write_text(COMPACT_HAT_CONFIG)
    result = CliRunner().invoke(cli, ["export", "--arch", str(config), "--space", "compact",
                                      "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["arch_id"] == read_hat_config(config).arch_id
    assert read_hat_config(config).decoder_arbitrary_ende_attn == (-1, 2)
    wrong_space = CliRunner().invoke(cli, ["export", "--arch", str(IWSLT_45MS), "--space", "compact",
                                           "--out", str(tmp_path / "exp2")])
    assert wrong_space.exit_code == 1 and "not in space 'compact'" in wrong_space.output


def test_the_default_source_length_follows_the_space():
    from profiler.protocol import TimingProtocol, default_seq_len

    assert default_seq_len("iwslt14.de-en") == 23
    assert default_seq_len("wmt14.en-de") == 30 == TimingProtocol().seq_len
    assert default_seq_len("compact") == 30

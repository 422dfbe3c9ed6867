"""Architectures shared by the tests: the compact extremes and one mixed case (export, runners),
and a tiny space for supernet and search tests."""
from __future__ import annotations

from profiler.space import ArchConfig, DesignSpace, load_space

SPACE = load_space("compact")
MIXED = ArchConfig(
    encoder_embed_dim=192, encoder_layer_num=3, encoder_ffn_embed_dim=(512, 1024, 256),
    encoder_self_attention_heads=(2, 4, 2), decoder_embed_dim=128, decoder_layer_num=3,
    decoder_ffn_embed_dim=(256, 1024, 512), decoder_self_attention_heads=(4, 2, 4),
    decoder_ende_attention_heads=(2, 4, 4), decoder_arbitrary_ende_attn=(-1, 1, 2),
)
ARCHS = {"largest": SPACE.largest(), "smallest": SPACE.smallest(), "mixed": MIXED}
FORMATS = ("onnx", "torchscript")
#: Largest difference allowed between an exported graph and eager PyTorch.
TOL = 1e-4
#: A space small enough to train and search a supernet in seconds.
TINY_SEARCH_SPACE = DesignSpace(
    name="tiny", encoder_embed_dim=(32, 16), decoder_embed_dim=(32, 16), encoder_layer_num=(2,),
    decoder_layer_num=(1, 2), encoder_ffn_embed_dim=(64, 32), decoder_ffn_embed_dim=(64, 32),
    encoder_self_attention_heads=(2, 1), decoder_self_attention_heads=(2, 1), decoder_ende_attention_heads=(2, 1),
    decoder_arbitrary_ende_attn=(-1, 1), qkv_dim=16, src_vocab=512, tgt_vocab=512, max_positions=64)

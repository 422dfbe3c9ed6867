"""Architectures shared by the export and runner tests: the extremes and one mixed case."""
from __future__ import annotations

from profiler.space import ArchConfig, load_space

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

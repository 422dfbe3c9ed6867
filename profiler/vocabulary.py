"""The shared vocabulary: the genes of an architecture, HAT's feature and dataset column
names, and the encoder-decoder attention coding.

Defined once here (plain tuples and dicts, no dependencies) and imported by the design
space, the dataset, the predictor's features and the search, so that a gene or a column
has one spelling everywhere.
"""
from __future__ import annotations

#: Genes with one value per architecture.
SCALAR_GENES = ("encoder_embed_dim", "encoder_layer_num", "decoder_embed_dim", "decoder_layer_num")
#: Genes with one value per encoder layer.
ENCODER_LAYER_GENES = ("encoder_ffn_embed_dim", "encoder_self_attention_heads")
#: Genes with one value per decoder layer.
DECODER_LAYER_GENES = ("decoder_ffn_embed_dim", "decoder_self_attention_heads",
                       "decoder_ende_attention_heads", "decoder_arbitrary_ende_attn")
#: Every gene, scalars first.
GENES = SCALAR_GENES + ENCODER_LAYER_GENES + DECODER_LAYER_GENES

#: HAT's "arbitrary encoder-decoder attention" code -> number of last encoder layers attended.
ENDE_ATTN_LAYERS = {-1: 1, 1: 2, 2: 3}

#: HAT's feature names, in the order of its latency CSV files (averages over active layers;
#: the attention code counted as `ENDE_ATTN_LAYERS` layers).
HAT_FEATURES = (
    "encoder_embed_dim",
    "encoder_layer_num",
    "encoder_ffn_embed_dim_avg",
    "encoder_self_attention_heads_avg",
    "decoder_embed_dim",
    "decoder_layer_num",
    "decoder_ffn_embed_dim_avg",
    "decoder_self_attention_heads_avg",
    "decoder_ende_attention_heads_avg",
    "decoder_arbitrary_ende_attn_avg",
)
#: HAT's feature normalisation (latency_predictor.py).
HAT_FEATURE_NORM = (640, 6, 2048, 6, 640, 6, 2048, 6, 6, 2)

#: Dataset columns of the per-part trimmed means (ms), HAT's names.
ENCODER_LATENCY_COLUMN = "latency_mean_encoder"
DECODER_LATENCY_COLUMN = "latency_mean_decoder"
#: HAT's four latency columns (ms): trimmed mean and standard deviation of each part.
HAT_LATENCY_COLUMNS = (ENCODER_LATENCY_COLUMN, DECODER_LATENCY_COLUMN,
                       "latency_std_encoder", "latency_std_decoder")
#: HAT's 14 columns, with HAT's names and order.
HAT_COLUMNS = HAT_FEATURES + HAT_LATENCY_COLUMNS
#: hatprof's own columns: the total latency (ms), the architecture's id and its JSON.
TOTAL_LATENCY_COLUMN = "latency_ms"
ARCH_ID_COLUMN = "arch_id"
ARCH_COLUMN = "arch"

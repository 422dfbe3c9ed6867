"""HAT's published SubTransformer configs (YAML files) read as `ArchConfig`s.

HAT (mit-han-lab/hardware-aware-transformers) publishes each searched model as
`configs/<task>/subtransformer/HAT_<task>_<device>@<latency>_bleu@<bleu>.yml`, ten keys
like `encoder-embed-dim-subtransformer: 512` and `encoder-ffn-embed-dim-all-subtransformer:
[3072, ...]`. With this module `hatprof measure --archs` and `hatprof export --arch`
take those files as they are, so HAT's models can be measured on one's own device.
Keys other than the ten genes (training options a config may carry) are ignored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from profiler.errors import SpaceError
from profiler.space import ArchConfig

logger = logging.getLogger(__name__)

#: HAT's YAML key of each gene of `ArchConfig`.
HAT_CONFIG_KEYS: dict[str, str] = {
    "encoder-embed-dim-subtransformer": "encoder_embed_dim",
    "encoder-layer-num-subtransformer": "encoder_layer_num",
    "encoder-ffn-embed-dim-all-subtransformer": "encoder_ffn_embed_dim",
    "encoder-self-attention-heads-all-subtransformer": "encoder_self_attention_heads",
    "decoder-embed-dim-subtransformer": "decoder_embed_dim",
    "decoder-layer-num-subtransformer": "decoder_layer_num",
    "decoder-ffn-embed-dim-all-subtransformer": "decoder_ffn_embed_dim",
    "decoder-self-attention-heads-all-subtransformer": "decoder_self_attention_heads",
    "decoder-ende-attention-heads-all-subtransformer": "decoder_ende_attention_heads",
    "decoder-arbitrary-ende-attn-all-subtransformer": "decoder_arbitrary_ende_attn",
}
#: File name endings read as HAT configs rather than JSON.
YAML_SUFFIXES = (".yml", ".yaml")


def is_hat_config_file(path: str | Path) -> bool:
    """Whether `path` names a YAML file (read as a HAT config)."""
    return Path(path).suffix.lower() in YAML_SUFFIXES


def arch_from_hat_config(data: Any) -> ArchConfig:
    """The architecture of a parsed HAT SubTransformer config.

    Per-layer lists longer than the layer count are cut to it, as HAT's model does.
    """
    if not isinstance(data, Mapping) or not set(data) & set(HAT_CONFIG_KEYS):
        raise SpaceError("not a HAT SubTransformer config: expected keys like "
                         "'encoder-embed-dim-subtransformer'")
    missing = [key for key in HAT_CONFIG_KEYS if key not in data]
    if missing:
        raise SpaceError(f"HAT config lacks {', '.join(missing)}")
    ignored = sorted(str(key) for key in set(data) - set(HAT_CONFIG_KEYS))
    if ignored:
        logger.debug("HAT config: ignoring non-architecture keys %s", ", ".join(ignored))
    return ArchConfig.from_dict({gene: data[key] for key, gene in HAT_CONFIG_KEYS.items()})


def read_hat_config(path: str | Path) -> ArchConfig:
    """The architecture in a HAT SubTransformer YAML file."""
    import yaml  # a workstation dependency; the device side never reads configs

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return arch_from_hat_config(data)
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None

"""Design spaces and SubTransformer architectures (HAT's encoding).

A `DesignSpace` lists the choices for every gene; an `ArchConfig` is one
SubTransformer drawn from it, described per layer the way HAT describes it.
Both are frozen, validated values with `to_dict`/`from_dict`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from profiler.errors import SpaceError
# HAT_FEATURES and HAT_FEATURE_NORM are imported from here too; profiler.vocabulary defines them.
from profiler.vocabulary import (DECODER_LAYER_GENES, ENCODER_LAYER_GENES, ENDE_ATTN_LAYERS,  # noqa: F401
                                 HAT_FEATURE_NORM, HAT_FEATURES, SCALAR_GENES)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpaceError(f"{name} must be a list of integers, got {value!r}")
    items = tuple(value)
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise SpaceError(f"{name} must be a non-empty list of integers, got {list(items)!r}")
    return items


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpaceError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class DesignSpace:
    """The choices of every gene of a SuperTransformer, plus its fixed sizes."""

    name: str
    encoder_embed_dim: tuple[int, ...]
    decoder_embed_dim: tuple[int, ...]
    encoder_layer_num: tuple[int, ...]
    decoder_layer_num: tuple[int, ...]
    encoder_ffn_embed_dim: tuple[int, ...]
    decoder_ffn_embed_dim: tuple[int, ...]
    encoder_self_attention_heads: tuple[int, ...]
    decoder_self_attention_heads: tuple[int, ...]
    decoder_ende_attention_heads: tuple[int, ...]
    decoder_arbitrary_ende_attn: tuple[int, ...] = (-1, 1, 2)
    qkv_dim: int = 512
    src_vocab: int = 32768
    tgt_vocab: int = 32768
    max_positions: int = 256
    description: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "tuple[int, ...]":
                items = _int_tuple(f.name, value)
                if f.name != "decoder_arbitrary_ende_attn" and min(items) <= 0:
                    raise SpaceError(f"{f.name} choices must be positive, got {list(items)}")
                object.__setattr__(self, f.name, items)
            elif f.type == "int":
                _positive_int(f.name, value)
        bad = set(self.decoder_arbitrary_ende_attn) - set(ENDE_ATTN_LAYERS)
        if bad:
            raise SpaceError(f"decoder_arbitrary_ende_attn choices must be -1, 1 or 2, got {sorted(bad)}")
        for name in ("encoder_self_attention_heads", "decoder_self_attention_heads",
                     "decoder_ende_attention_heads"):
            for heads in getattr(self, name):
                if self.qkv_dim % heads:
                    raise SpaceError(f"{name} choice {heads} does not divide qkv_dim {self.qkv_dim}")
        needed = max(ENDE_ATTN_LAYERS[a] for a in self.decoder_arbitrary_ende_attn)
        if min(self.encoder_layer_num) < needed:
            raise SpaceError(
                f"encoder_layer_num must be at least {needed} for arbitrary attention "
                f"{max(self.decoder_arbitrary_ende_attn)}"
            )

    def choices(self, gene: str) -> tuple[int, ...]:
        return getattr(self, gene)

    def sample(self, rng: random.Random) -> "ArchConfig":
        """One architecture, every gene drawn uniformly (layer counts first)."""
        enc_layers = rng.choice(self.encoder_layer_num)
        dec_layers = rng.choice(self.decoder_layer_num)
        genes: dict[str, Any] = {
            "encoder_embed_dim": rng.choice(self.encoder_embed_dim),
            "encoder_layer_num": enc_layers,
            "decoder_embed_dim": rng.choice(self.decoder_embed_dim),
            "decoder_layer_num": dec_layers,
        }
        for gene in ENCODER_LAYER_GENES:
            genes[gene] = [rng.choice(self.choices(gene)) for _ in range(enc_layers)]
        for gene in DECODER_LAYER_GENES:
            genes[gene] = [rng.choice(self.choices(gene)) for _ in range(dec_layers)]
        return ArchConfig(**genes)

    def sample_many(self, n: int, seed: int) -> list["ArchConfig"]:
        """`n` distinct architectures, reproducible from `seed`; bounded, never hangs."""
        rng = random.Random(seed)
        seen: dict[str, ArchConfig] = {}
        attempts = 0
        while len(seen) < n:
            attempts += 1
            if attempts > 100 * n + 1000:
                raise SpaceError(f"space {self.name!r} has fewer than {n} distinct architectures")
            arch = self.sample(rng)
            seen.setdefault(arch.arch_id, arch)
        return list(seen.values())

    def largest(self) -> "ArchConfig":
        return self._extreme(max)

    def smallest(self) -> "ArchConfig":
        return self._extreme(min)

    def _extreme(self, pick) -> "ArchConfig":
        enc_layers = pick(self.encoder_layer_num)
        dec_layers = pick(self.decoder_layer_num)
        genes: dict[str, Any] = {
            "encoder_embed_dim": pick(self.encoder_embed_dim),
            "encoder_layer_num": enc_layers,
            "decoder_embed_dim": pick(self.decoder_embed_dim),
            "decoder_layer_num": dec_layers,
        }
        for gene in ENCODER_LAYER_GENES:
            genes[gene] = [pick(self.choices(gene))] * enc_layers
        for gene in DECODER_LAYER_GENES:
            genes[gene] = [pick(self.choices(gene))] * dec_layers
        return ArchConfig(**genes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def digest(self) -> str:
        """The first 16 hex digits of the SHA-256 of the space's content (its name left out), so
        rows, predictors and supernets can tell two spaces apart that share a name, or not."""
        content = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DesignSpace":
        if not isinstance(data, Mapping):
            raise SpaceError("a design space must be a mapping of gene names to choices")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpaceError(f"unknown design-space field(s): {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise SpaceError(f"design space is missing field(s): {', '.join(missing)}")
        return cls(**dict(data))


def _hat_space(name: str, description: str, ffn: tuple[int, ...], heads: tuple[int, ...],
               vocab: int) -> DesignSpace:
    return DesignSpace(
        name=name,
        description=description,
        encoder_embed_dim=(640, 512),
        decoder_embed_dim=(640, 512),
        encoder_layer_num=(6,),
        decoder_layer_num=(1, 2, 3, 4, 5, 6),
        encoder_ffn_embed_dim=ffn,
        decoder_ffn_embed_dim=ffn,
        encoder_self_attention_heads=heads,
        decoder_self_attention_heads=heads,
        decoder_ende_attention_heads=heads,
        qkv_dim=512,
        src_vocab=vocab,
        tgt_vocab=vocab,
    )


BUILTIN_SPACES: dict[str, DesignSpace] = {
    space.name: space
    for space in (
        _hat_space("wmt14.en-de", "HAT's WMT'14 En-De space (also En-Fr, WMT'19 En-De); "
                   "joint dictionary of about 32k entries", (3072, 2048, 1024), (8, 4), 32768),
        _hat_space("iwslt14.de-en", "HAT's IWSLT'14 De-En space; about 10k-entry dictionary",
                   (2048, 1024, 512), (4, 2), 10152),
        _hat_space("hat-latency", "HAT's wider latency-dataset space: FFN adds 512, heads add 2",
                   (3072, 2048, 1024, 512), (8, 4, 2), 32768),
        DesignSpace(
            name="compact",
            description="a small HAT-shaped space: one SubTransformer is measured with the full "
                        "protocol in seconds on a laptop CPU, and its supernet trains on CPU",
            encoder_embed_dim=(256, 192, 128),
            decoder_embed_dim=(256, 192, 128),
            encoder_layer_num=(3, 4),
            decoder_layer_num=(1, 2, 3, 4),
            encoder_ffn_embed_dim=(1024, 512, 256),
            decoder_ffn_embed_dim=(1024, 512, 256),
            encoder_self_attention_heads=(4, 2),
            decoder_self_attention_heads=(4, 2),
            decoder_ende_attention_heads=(4, 2),
            qkv_dim=128,
            src_vocab=1024,
            tgt_vocab=1024,
            max_positions=128,
        ),
    )
}


#: HAT's feature columns and the genes whose choices bound them: a whole-model gene's value is
#: one of its choices, a per-layer average lies between the gene's smallest and largest choice.
_FEATURE_GENES = {
    "encoder_embed_dim": "encoder_embed_dim", "encoder_layer_num": "encoder_layer_num",
    "encoder_ffn_embed_dim_avg": "encoder_ffn_embed_dim",
    "encoder_self_attention_heads_avg": "encoder_self_attention_heads",
    "decoder_embed_dim": "decoder_embed_dim", "decoder_layer_num": "decoder_layer_num",
    "decoder_ffn_embed_dim_avg": "decoder_ffn_embed_dim",
    "decoder_self_attention_heads_avg": "decoder_self_attention_heads",
    "decoder_ende_attention_heads_avg": "decoder_ende_attention_heads",
}


def feature_outside(space: DesignSpace, row: Mapping[str, float]) -> str | None:
    """The first of HAT's features in `row` that `space` cannot produce ('name=value'), or None."""
    for feature, gene in _FEATURE_GENES.items():
        if feature not in row:
            continue
        value, choices = float(row[feature]), space.choices(gene)
        inside = (min(choices) - 1e-6 <= value <= max(choices) + 1e-6 if feature.endswith("_avg")
                  else value in choices)
        if not inside:
            return f"{feature}={value:g}"
    return None


def infer_space(rows: Sequence[Mapping[str, float]]) -> DesignSpace:
    """The smallest built-in space that produces every row's HAT features: HAT's files name no
    space, and its WMT and IWSLT spaces differ in their FFN and head choices."""
    fitting = [s for s in BUILTIN_SPACES.values() if all(feature_outside(s, row) is None for row in rows)]
    if not fitting:
        raise SpaceError("no built-in design space holds every row's features; give --space")
    return min(fitting, key=lambda s: math.prod(len(s.choices(g)) for g in _FEATURE_GENES.values()))


def list_spaces() -> list[DesignSpace]:
    return list(BUILTIN_SPACES.values())


def load_space(name_or_path: str) -> DesignSpace:
    """A built-in space by name, or a space read from a YAML or JSON file."""
    if name_or_path in BUILTIN_SPACES:
        return BUILTIN_SPACES[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        known = ", ".join(BUILTIN_SPACES)
        raise SpaceError(f"unknown space {name_or_path!r} (built-in: {known}; or a .yaml/.json file)")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"cannot read space file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise SpaceError(f"cannot parse space file {path}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError does not derive from ValueError
        raise SpaceError(f"cannot parse space file {path}: {exc}") from None
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": path.stem, **data}
    return DesignSpace.from_dict(data)


@dataclass(frozen=True)
class ArchConfig:
    """One SubTransformer, described per active layer as HAT describes it."""

    encoder_embed_dim: int
    encoder_layer_num: int
    encoder_ffn_embed_dim: tuple[int, ...]
    encoder_self_attention_heads: tuple[int, ...]
    decoder_embed_dim: int
    decoder_layer_num: int
    decoder_ffn_embed_dim: tuple[int, ...]
    decoder_self_attention_heads: tuple[int, ...]
    decoder_ende_attention_heads: tuple[int, ...]
    decoder_arbitrary_ende_attn: tuple[int, ...]
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in SCALAR_GENES:
            _positive_int(name, getattr(self, name))
        for names, layers in ((ENCODER_LAYER_GENES, self.encoder_layer_num),
                              (DECODER_LAYER_GENES, self.decoder_layer_num)):
            for name in names:
                items = _int_tuple(name, getattr(self, name))
                if len(items) != layers:
                    raise SpaceError(f"{name} has {len(items)} entries for {layers} layers")
                object.__setattr__(self, name, items)
        for i, code in enumerate(self.decoder_arbitrary_ende_attn):
            if code not in ENDE_ATTN_LAYERS:
                raise SpaceError(f"decoder_arbitrary_ende_attn[{i}]={code} must be -1, 1 or 2")
            if ENDE_ATTN_LAYERS[code] > self.encoder_layer_num:
                raise SpaceError(f"decoder_arbitrary_ende_attn[{i}]={code} needs "
                                 f"{ENDE_ATTN_LAYERS[code]} encoder layers, arch has {self.encoder_layer_num}")
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
        object.__setattr__(self, "_id", digest)

    @property
    def arch_id(self) -> str:
        """Stable identifier: the first 16 hex digits of the canonical JSON's SHA-256."""
        return self._id

    @property
    def ende_layers(self) -> tuple[int, ...]:
        """For each decoder layer, how many of the last encoder layers it attends to."""
        return tuple(ENDE_ATTN_LAYERS[a] for a in self.decoder_arbitrary_ende_attn)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchConfig":
        """Read the flat form (`to_dict`) or HAT's nested {"encoder": ..., "decoder": ...} form.

        HAT lists per-layer genes for the largest layer count; entries past the active
        layer count are ignored, as HAT ignores them.
        """
        if not isinstance(data, Mapping):
            raise SpaceError("an architecture must be a JSON object")
        if "encoder" in data or "decoder" in data:
            flat: dict[str, Any] = {}
            for part in ("encoder", "decoder"):
                section = data.get(part)
                if not isinstance(section, Mapping):
                    raise SpaceError(f"HAT-style architecture needs an object {part!r}")
                flat.update(section)
            data = flat
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SpaceError(f"unknown architecture field(s): {', '.join(unknown)}")
        missing = [n for n in names if n not in data]
        if missing:
            raise SpaceError(f"architecture is missing field(s): {', '.join(missing)}")
        values = dict(data)
        for per_layer, count in ((ENCODER_LAYER_GENES, "encoder_layer_num"),
                                 (DECODER_LAYER_GENES, "decoder_layer_num")):
            layers = values[count]
            for name in per_layer:
                items = values[name]
                if isinstance(layers, int) and isinstance(items, list) and len(items) > layers:
                    values[name] = items[:layers]
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ArchConfig":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpaceError(f"architecture is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def validate(self, space: DesignSpace) -> "ArchConfig":
        """Raise `SpaceError` naming the first gene that lies outside `space`."""
        for name in SCALAR_GENES:
            value = getattr(self, name)
            if value not in space.choices(name):
                raise SpaceError(f"{name}={value} is not in space {space.name!r} "
                                 f"(choices: {', '.join(map(str, space.choices(name)))})")
        for name in ENCODER_LAYER_GENES + DECODER_LAYER_GENES:
            for i, value in enumerate(getattr(self, name)):
                if value not in space.choices(name):
                    raise SpaceError(f"{name}[{i}]={value} is not in space {space.name!r} "
                                     f"(choices: {', '.join(map(str, space.choices(name)))})")
        return self

    def hat_features(self) -> list[float]:
        """HAT's 10 latency features (averages over active layers), unnormalised."""
        def mean(values: tuple[int, ...]) -> float:
            return sum(values) / len(values)

        return [
            float(self.encoder_embed_dim),
            float(self.encoder_layer_num),
            mean(self.encoder_ffn_embed_dim),
            mean(self.encoder_self_attention_heads),
            float(self.decoder_embed_dim),
            float(self.decoder_layer_num),
            mean(self.decoder_ffn_embed_dim),
            mean(self.decoder_self_attention_heads),
            mean(self.decoder_ende_attention_heads),
            mean(self.ende_layers),
        ]

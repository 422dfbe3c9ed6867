"""Parallel corpora for the supernet: vocabularies, the bundled synthetic task, user text, batches.

A corpus is a value: two vocabularies and train/valid/test splits of id pairs (no BOS/EOS;
batching adds them). The synthetic task comes from `nas.grammar`; a user's own line-aligned
files are read with a whitespace tokenizer. Ids beyond a space's vocabulary never occur:
vocabularies are capped at the space's size and unknown words map to UNK.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from nas.grammar import SyntheticTaskConfig, generate_pairs, synthetic_vocabularies
from profiler.errors import HatprofError
from profiler.model import BOS, EOS, PAD, UNK
from profiler.space import DesignSpace

logger = logging.getLogger(__name__)

#: Token strings of PAD, BOS, EOS, UNK (ids 0-3, as in profiler.model).
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

Pair = tuple[tuple[int, ...], tuple[int, ...]]


class CorpusError(HatprofError):
    """Unreadable or mismatched parallel text, or a corpus that does not fit a space."""


@dataclass(frozen=True)
class Vocabulary:
    """Token strings by id; ids 0-3 are PAD, BOS, EOS, UNK."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        if tokens[:4] != SPECIALS:
            raise CorpusError(f"a vocabulary must start with {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise CorpusError("a vocabulary must not repeat tokens")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, sentences: Sequence[Sequence[str]], max_size: int) -> "Vocabulary":
        """The `max_size - 4` most frequent words (ties alphabetically) after the specials."""
        counts = Counter(w for s in sentences for w in s if w not in SPECIALS)
        words = sorted(counts, key=lambda w: (-counts[w], w))[: max(max_size - len(SPECIALS), 0)]
        return cls(SPECIALS + tuple(words))

    def encode(self, words: Sequence[str]) -> tuple[int, ...]:
        return tuple(self._index.get(w, UNK) for w in words)

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words of `ids`, stopping at EOS and skipping PAD and BOS; ids past the end read as UNK."""
        words = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                words.append(self.tokens[i] if i < len(self.tokens) else SPECIALS[UNK])
        return words

    def to_list(self) -> list[str]:
        return list(self.tokens)


@dataclass(frozen=True)
class ParallelCorpus:
    """Two vocabularies, id-pair splits, and the spec that rebuilds the corpus."""

    src_vocab: Vocabulary
    tgt_vocab: Vocabulary
    train: tuple[Pair, ...]
    valid: tuple[Pair, ...]
    test: tuple[Pair, ...]
    spec: dict[str, Any]

    def check_fits(self, space: DesignSpace) -> None:
        """Raise `CorpusError` if the vocabularies or sentences exceed the space's sizes."""
        if len(self.src_vocab) > space.src_vocab or len(self.tgt_vocab) > space.tgt_vocab:
            raise CorpusError(
                f"vocabularies of {len(self.src_vocab)}/{len(self.tgt_vocab)} words exceed space "
                f"{space.name!r} ({space.src_vocab}/{space.tgt_vocab})")
        longest = max((max(len(s), len(t)) for split in (self.train, self.valid) for s, t in split), default=0)
        if longest + 1 > space.max_positions:
            raise CorpusError(f"a sentence of {longest} tokens exceeds max_positions "
                              f"{space.max_positions} of space {space.name!r}")


def synthetic_corpus(config: SyntheticTaskConfig | None = None) -> ParallelCorpus:
    """The bundled synthetic translation task, fully determined by `config`."""
    config = config or SyntheticTaskConfig()
    src_tokens, tgt_tokens = synthetic_vocabularies(config)
    src_vocab, tgt_vocab = Vocabulary(SPECIALS + src_tokens), Vocabulary(SPECIALS + tgt_tokens)
    splits = generate_pairs(config)
    encoded = {name: tuple((src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs)
               for name, pairs in splits.items()}
    return ParallelCorpus(src_vocab, tgt_vocab, encoded["train"], encoded["valid"], encoded["test"],
                          {"kind": "synthetic", **config.to_dict()})


def tokenize(line: str) -> list[str]:
    """The built-in tokenizer: whitespace splitting (bring your own for anything finer)."""
    return line.split()


def _read_lines(path: str | Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [tokenize(line) for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read {path}: {exc}") from None


def parallel_text_corpus(src_path: str | Path, tgt_path: str | Path, space: DesignSpace,
                         valid_size: int = 500, test_size: int = 500, seed: int = 0) -> ParallelCorpus:
    """A corpus from line-aligned source/target files; valid and test are held out at random.

    Empty lines and pairs longer than the space's positions are dropped; the vocabularies
    (built on train only) are capped at the space's sizes, other words become UNK.
    """
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise CorpusError(f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}")
    limit = space.max_positions - 1
    pairs = [(s, t) for s, t in zip(src_lines, tgt_lines) if s and t and len(s) <= limit and len(t) <= limit]
    if len(pairs) < len(src_lines):
        logger.warning("dropped %d empty or too long line pairs", len(src_lines) - len(pairs))
    if len(pairs) <= valid_size + test_size:
        raise CorpusError(f"{len(pairs)} usable line pairs: need more than valid+test = {valid_size + test_size}")
    random.Random(seed).shuffle(pairs)
    valid, test, train = pairs[:valid_size], pairs[valid_size:valid_size + test_size], pairs[valid_size + test_size:]
    src_vocab = Vocabulary.build([s for s, _ in train], space.src_vocab)
    tgt_vocab = Vocabulary.build([t for _, t in train], space.tgt_vocab)

    def encode(split: list[tuple[list[str], list[str]]]) -> tuple[Pair, ...]:
        return tuple((src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in split)

    spec = {"kind": "parallel", "src": str(Path(src_path).resolve()), "tgt": str(Path(tgt_path).resolve()),
            "valid_size": valid_size,
            "test_size": test_size, "seed": seed}
    return ParallelCorpus(src_vocab, tgt_vocab, encode(train), encode(valid), encode(test), spec)


def load_corpus(spec: Mapping[str, Any], space: DesignSpace, with_train: bool = True) -> ParallelCorpus:
    """Rebuild a corpus from its `spec` (as stored in a supernet checkpoint).

    `with_train=False` skips generating the synthetic training split (valid/test are unchanged).
    """
    kind = spec.get("kind")
    if kind == "synthetic":
        config = SyntheticTaskConfig.from_dict({k: v for k, v in spec.items() if k != "kind"})
        if not with_train:
            return dataclasses.replace(synthetic_corpus(dataclasses.replace(config, train_size=0)),
                                       spec=dict(spec))
        return synthetic_corpus(config)
    if kind == "parallel":
        return parallel_text_corpus(spec["src"], spec["tgt"], space, spec["valid_size"], spec["test_size"],
                                    spec["seed"])
    raise CorpusError(f"unknown corpus kind {kind!r}")


@dataclass(frozen=True)
class Batch:
    """Padded tensors for teacher forcing: src ends in EOS, prev starts with BOS, target ends in EOS."""

    src: Tensor
    prev_output: Tensor
    target: Tensor

    @property
    def ntokens(self) -> int:
        return int((self.target != PAD).sum())


def make_batch(pairs: Sequence[Pair]) -> Batch:
    n = len(pairs)
    src_len = max(len(s) for s, _ in pairs) + 1
    tgt_len = max(len(t) for _, t in pairs) + 1
    src = torch.full((n, src_len), PAD, dtype=torch.long)
    prev = torch.full((n, tgt_len), PAD, dtype=torch.long)
    target = torch.full((n, tgt_len), PAD, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s) + 1] = torch.tensor(s + (EOS,))
        prev[i, : len(t) + 1] = torch.tensor((BOS,) + t)
        target[i, : len(t) + 1] = torch.tensor(t + (EOS,))
    return Batch(src, prev, target)


def fixed_batches(pairs: Sequence[Pair], batch_sentences: int) -> list[Batch]:
    """Deterministic batches of similar lengths (little padding): for validation and scoring."""
    ordered = sorted(pairs, key=lambda p: (len(p[0]), len(p[1])))
    return [make_batch(ordered[i:i + batch_sentences]) for i in range(0, len(ordered), batch_sentences)]


def training_batches(pairs: Sequence[Pair], batch_sentences: int, seed: int) -> Iterator[Batch]:
    """An endless, seeded stream of shuffled batches; each epoch groups sentences of similar length."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    pool = batch_sentences * 50
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=lambda i: len(pairs[i][0]))
            batches = [chunk[i:i + batch_sentences] for i in range(0, len(chunk), batch_sentences)]
            rng.shuffle(batches)
            for idx in batches:
                yield make_batch([pairs[i] for i in idx])

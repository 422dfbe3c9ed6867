"""CPU training of a SuperTransformer, and its checkpoints.

Each step trains SubTransformers sampled from the space on one batch: one uniform sample
(HAT's rule), or the "sandwich" of largest, smallest and one uniform sample with their
gradients summed. Label-smoothed cross-entropy, Adam with linear warm-up and cosine decay.

A checkpoint is `torch.save` of {"header": JSON-able dict, "state_dict": tensors}, read back
with `weights_only=True`: no pickled code, so it outlives library upgrades.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nas.corpus import ParallelCorpus, load_corpus, training_batches
from nas.supernet import SuperTransformer
from profiler.errors import HatprofError
from profiler.files import write_atomically
from profiler.model import PAD
from profiler.space import ArchConfig, DesignSpace

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hatprof-supernet"
CHECKPOINT_VERSION = 1
SAMPLING_RULES = ("uniform", "sandwich")


class CheckpointError(HatprofError):
    """A supernet checkpoint that cannot be read or does not match its corpus."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of supernet training."""

    steps: int = 2400
    batch_sentences: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300
    final_lr_ratio: float = 0.05
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    sampling: str = "uniform"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_RULES:
            raise HatprofError(f"sampling must be one of {', '.join(SAMPLING_RULES)}, got {self.sampling!r}")
        if self.steps <= 0 or self.batch_sentences <= 0:
            raise HatprofError("steps and batch_sentences must be positive")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to `final_lr_ratio * lr` at `steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1)
        floor = self.final_lr_ratio
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}})


def _step_archs(space: DesignSpace, rule: str, rng: random.Random) -> list[ArchConfig]:
    if rule == "sandwich":
        return [space.largest(), space.smallest(), space.sample(rng)]
    return [space.sample(rng)]


def train_supernet(supernet: SuperTransformer, corpus: ParallelCorpus, config: TrainConfig,
                   on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train in place; returns a JSON-able report (loss curve every 50 steps, wall and CPU seconds)."""
    corpus.check_fits(supernet.space)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    batches = training_batches(corpus.train, config.batch_sentences, config.seed)
    optimizer = torch.optim.Adam(supernet.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-8)
    supernet.train()
    curve: list[tuple[int, float]] = []
    running, start, cpu_start = 0.0, time.perf_counter(), time.process_time()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        batch = next(batches)
        archs = _step_archs(supernet.space, config.sampling, rng)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for arch in archs:
            logits = supernet(batch.src, batch.prev_output, arch)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.target.flatten(), ignore_index=PAD,
                                               label_smoothing=config.label_smoothing)
            loss.backward()
            step_loss += float(loss.detach()) / len(archs)
        nn.utils.clip_grad_norm_(supernet.parameters(), config.clip_norm)
        optimizer.step()
        running += step_loss
        if (step + 1) % 50 == 0:
            curve.append((step + 1, running / 50))
            logger.info("step %d: training loss %.3f", step + 1, running / 50)
            running = 0.0
        if on_step is not None:
            on_step(step, step_loss)
    supernet.eval()
    return {"steps": config.steps, "elapsed_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start, "threads": torch.get_num_threads(), "loss_curve": curve}


def save_checkpoint(path: str | Path, supernet: SuperTransformer, corpus: ParallelCorpus,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write the shared weights in float16 with a JSON-able header (space, corpus, vocabularies)."""
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "space": supernet.space.to_dict(),
        "corpus": dict(corpus.spec),
        "src_vocab": corpus.src_vocab.to_list(),
        "tgt_vocab": corpus.tgt_vocab.to_list(),
        "dtype": "float16",
        **dict(extra or {}),
    }
    state = {k: v.detach().to(torch.float16) for k, v in supernet.shared.state_dict().items()}
    write_atomically(path, lambda tmp: torch.save({"header": header, "state_dict": state}, tmp), CheckpointError)


def load_checkpoint(path: str | Path) -> tuple[SuperTransformer, dict[str, Any]]:
    """The supernet (float32, eval mode) and the header of a checkpoint."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise CheckpointError(f"{path} is not a hatprof supernet checkpoint (give one that "
                              "`hatprof supernet train` wrote)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, IndexError, KeyError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read supernet checkpoint {path}: {exc}") from None
    header = data.get("header") if isinstance(data, dict) else None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a hatprof supernet checkpoint")
    if header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {header.get('version')}, "
                              f"this hatprof reads version {CHECKPOINT_VERSION}")
    supernet = SuperTransformer(DesignSpace.from_dict(header["space"]))
    try:
        supernet.shared.load_state_dict({k: v.float() for k, v in data["state_dict"].items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its design space: {exc}") from None
    return supernet.eval(), header


def checkpoint_corpus(header: Mapping[str, Any], space: DesignSpace, with_train: bool = False) -> ParallelCorpus:
    """Rebuild the corpus a checkpoint was trained on, checking that its vocabularies match."""
    corpus = load_corpus(header["corpus"], space, with_train)
    if corpus.src_vocab.to_list() != header["src_vocab"] or corpus.tgt_vocab.to_list() != header["tgt_vocab"]:
        raise CheckpointError("the corpus rebuilt from the checkpoint's spec has other vocabularies "
                              "than the checkpoint (were its text files changed?)")
    return corpus

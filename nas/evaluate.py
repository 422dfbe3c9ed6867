"""Quality of a SubTransformer with inherited weights: validation loss (cheap) and BLEU (greedy).

The loss is the search's fitness: a token-level mean negative log-likelihood over a fixed
set of length-sorted validation batches, computed under `inference_mode`, so thousands of
candidates are scored consistently. BLEU needs decoding and is meant for the final
candidates only.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from nas.bleu import BleuScore, corpus_bleu
from nas.corpus import Batch, Pair, Vocabulary, fixed_batches, make_batch
from nas.supernet import SuperTransformer, extract_subtransformer
from profiler.model import BOS, EOS, PAD, SubTransformer
from profiler.space import ArchConfig

logger = logging.getLogger(__name__)

#: Validation and test sentences behind the reported loss and BLEU of finished candidates.
REFERENCE_SENTENCES = 500


def _nll(logits: Tensor, target: Tensor) -> tuple[float, int]:
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD, reduction="sum")
    return float(loss), int((target != PAD).sum())


@torch.inference_mode()
def validation_loss(supernet: SuperTransformer, arch: ArchConfig, batches: Sequence[Batch]) -> float:
    """Mean per-token negative log-likelihood (nats) of `arch` with inherited weights."""
    total, tokens = 0.0, 0
    for batch in batches:
        loss, n = _nll(supernet(batch.src, batch.prev_output, arch), batch.target)
        total += loss
        tokens += n
    return total / tokens


class LossScorer:
    """The search's `score_fn`: validation loss of each arch on a fixed set of sentences."""

    def __init__(self, supernet: SuperTransformer, pairs: Sequence[Pair], batch_sentences: int = 64):
        self.supernet = supernet.eval()
        self.batches = fixed_batches(pairs, batch_sentences)

    def __call__(self, archs: Sequence[ArchConfig]) -> list[float]:
        return [validation_loss(self.supernet, arch, self.batches) for arch in archs]


@torch.inference_mode()
def greedy_decode(model: SubTransformer, src: Tensor, max_len: int) -> list[tuple[int, ...]]:
    """Greedy translations (ids, without EOS) of the padded sources `src` (N, S)."""
    n = src.shape[0]
    src_mask = torch.zeros(n, 1, 1, src.shape[1]).masked_fill((src == PAD)[:, None, None, :], float("-inf"))
    cross = model.cross_kv(model.encode(src, src_mask))
    cross_masks = [src_mask.repeat(1, 1, 1, k) for k in model.arch.ende_layers]
    cache = model.empty_cache(n)
    tokens = torch.full((n, 1), BOS, dtype=torch.long)
    finished = torch.zeros(n, dtype=torch.bool)
    steps = []
    for step in range(max_len):
        logits, cache = model.decode(tokens, torch.tensor(step), cache, cross, None, cross_masks)
        nxt = logits[:, -1].argmax(-1).masked_fill(finished, PAD)
        steps.append(nxt)
        finished |= nxt == EOS
        if bool(finished.all()):
            break
        tokens = nxt[:, None]
    out = torch.stack(steps, dim=1).tolist()
    return [tuple(row[:row.index(EOS)]) if EOS in row else tuple(row) for row in out]


def bleu(supernet: SuperTransformer, arch: ArchConfig, pairs: Sequence[Pair], tgt_vocab: Vocabulary,
         batch_sentences: int = 64) -> BleuScore:
    """Corpus BLEU of greedy translations of `pairs` by `arch` with inherited weights."""
    model = extract_subtransformer(supernet, arch)
    limit = supernet.space.max_positions - 1
    hyps, refs = [], []
    for batch_start in range(0, len(pairs), batch_sentences):
        chunk = pairs[batch_start:batch_start + batch_sentences]
        src = make_batch(chunk).src
        max_len = min(2 * src.shape[1] + 10, limit)
        for hyp, (_, ref) in zip(greedy_decode(model, src, max_len), chunk):
            hyps.append(tgt_vocab.decode(hyp))
            refs.append(tgt_vocab.decode(ref))
    return corpus_bleu(hyps, refs)

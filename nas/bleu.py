"""Corpus BLEU-4 on already tokenized text, computed as sacreBLEU computes it.

Equivalent to `sacrebleu.corpus_bleu(hyps, [refs], tokenize="none")` with its defaults
(one reference per sentence, clipped n-gram counts summed over the corpus, "exp"
smoothing of zero-match orders, brevity penalty from the summed lengths), so figures
compare with published sacreBLEU scores on the same tokens.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

MAX_ORDER = 4


@dataclass(frozen=True)
class BleuScore:
    """BLEU in [0, 100] with the statistics it is derived from."""

    score: float
    precisions: tuple[float, ...]
    brevity_penalty: float
    sys_len: int
    ref_len: int


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> BleuScore:
    """BLEU-4 of tokenized `hypotheses` against one tokenized reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    correct = [0] * MAX_ORDER
    total = [0] * MAX_ORDER
    sys_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        sys_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, MAX_ORDER + 1):
            hyp_counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            correct[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    precisions = [0.0] * MAX_ORDER
    smooth = 1.0
    for n in range(MAX_ORDER):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    if sys_len == 0:
        bp = 0.0
    else:
        bp = 1.0 if sys_len >= ref_len else math.exp(1 - ref_len / sys_len)
    if bp == 0.0 or min(precisions) == 0.0:
        score = 0.0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / MAX_ORDER)
    return BleuScore(score, tuple(precisions), bp, sys_len, ref_len)

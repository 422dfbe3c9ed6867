from __future__ import annotations

import math

import pytest

from nas.bleu import corpus_bleu


def test_hand_computed_sentence() -> None:
    hyp = "the cat sat on the mat".split()
    ref = "the cat is on the mat".split()
    score = corpus_bleu([hyp], [ref])
    # 1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat),
    # 3-grams 1/4 (on the mat), 4-grams 0/3 -> "exp" smoothing 1/(2*3); equal lengths, BP 1.
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert score.score == pytest.approx(expected, abs=1e-9)
    assert score.score == pytest.approx(37.9918, abs=1e-4)
    assert score.precisions == pytest.approx((500 / 6, 60.0, 25.0, 100 / 6))
    assert score.brevity_penalty == 1.0


def test_hand_computed_corpus_with_brevity_penalty() -> None:
    hyps = ["the cat sat on the mat".split(), "a dog".split()]
    refs = ["the cat is on the mat".split(), "a dog runs fast".split()]
    score = corpus_bleu(hyps, refs)
    # Counts are summed over the corpus before dividing: 7/8, 4/6, 1/4, 0/3 (smoothed 1/6);
    # 8 hypothesis tokens against 10 reference tokens: BP = exp(1 - 10/8).
    expected = 100 * math.exp(1 - 10 / 8) * (7 / 8 * 4 / 6 * 1 / 4 * 1 / 6) ** 0.25
    assert score.score == pytest.approx(expected, abs=1e-9)
    assert (score.sys_len, score.ref_len) == (8, 10)


def test_clipping_and_extremes() -> None:
    ref = "a b c d e".split()
    assert corpus_bleu([ref], [ref]).score == pytest.approx(100.0)
    assert corpus_bleu([[]], [ref]).score == 0.0
    # "a a a a" matches "a" once only (clipped): unigram precision 1/4.
    assert corpus_bleu([["a"] * 4], [ref]).precisions[0] == pytest.approx(25.0)
    with pytest.raises(ValueError):
        corpus_bleu([ref], [])

from __future__ import annotations

import dataclasses

import pytest

from nas.corpus import (SPECIALS, CorpusError, Vocabulary, fixed_batches, load_corpus, make_batch,
                        parallel_text_corpus, synthetic_corpus, training_batches)
from nas.grammar import SyntheticTaskConfig, _Lexicon
from profiler.model import BOS, EOS, PAD, UNK
from profiler.space import load_space

SMALL = SyntheticTaskConfig(train_size=3000, valid_size=200, test_size=200)
SPACE = load_space("compact")


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(SMALL)


def words(corpus, pair):
    return corpus.src_vocab.decode(pair[0]), corpus.tgt_vocab.decode(pair[1])


def test_synthetic_corpus_is_deterministic_and_seeded(corpus) -> None:
    again = synthetic_corpus(SMALL)
    assert again.train == corpus.train and again.valid == corpus.valid and again.test == corpus.test
    other = synthetic_corpus(dataclasses.replace(SMALL, seed=SMALL.seed + 1))
    assert other.valid != corpus.valid
    assert load_corpus(corpus.spec, SPACE).valid == corpus.valid
    assert load_corpus(corpus.spec, SPACE, with_train=False).test == corpus.test


def test_splits_are_disjoint_and_fit_the_space(corpus) -> None:
    held_out = {s for s, _ in corpus.valid + corpus.test}
    assert len(held_out) == len(corpus.valid) + len(corpus.test)
    assert not held_out & {s for s, _ in corpus.train}
    corpus.check_fits(SPACE)
    for s, t in corpus.train[:500]:
        assert UNK not in s and UNK not in t and min(s + t) >= len(SPECIALS)


def test_grammar_reorders_to_verb_final_and_mirrors_adjectives(corpus) -> None:
    lex = _Lexicon(SMALL)
    src_adj, tgt_adj = lex.src["adjectives"], lex.tgt["adjectives"]
    checked = 0
    for pair in corpus.train[:300]:
        src, tgt = words(corpus, pair)
        # Target sentences end in verb + tense + person/number suffixes.
        assert tgt[-2] in ("-ta", "-ru", "-ro") and tgt[-1] in ("-m", "-t", "-k", "-mu", "-tu", "-ku")
        assert tgt[-3] in lex.tgt["verbs"] and tgt[-4] == "wo"
        # A simple sentence (no relative clause, no pronoun): adjectives of the subject mirrored.
        if "that" not in src and src[0] in ("the", "a", "some"):
            adjs = [w for w in src[1:] if w in src_adj]
            head = next(i for i, w in enumerate(src[1:], 1) if w not in src_adj)
            subj_adjs = [src_adj.index(w) for w in src[1:head]]
            tgt_subj_adjs = [tgt_adj.index(w) for w in tgt[: tgt.index("ga")] if w in tgt_adj]
            assert tgt_subj_adjs == subj_adjs[::-1]
            checked += bool(adjs)
    assert checked > 20


def test_grammar_agreement_depends_on_other_words(corpus) -> None:
    lex = _Lexicon(SMALL)
    gender = dict(zip(lex.tgt["nouns"], lex.gender))
    agreements = 0
    for pair in corpus.train[:300]:
        src, tgt = words(corpus, pair)
        # Each adjective suffix carries the gender of the noun it follows (the noun's lexical
        # gender) and the number marked by "-s" on the source noun.
        noun = None
        for w, nxt in zip(tgt, tgt[1:]):
            if w in gender:
                noun = w
            if w in lex.tgt["adjectives"]:
                assert nxt[1] == gender[noun]
                agreements += 1
        # The verb agrees with a pronoun subject however far away the verb is.
        if src[0] in ("i", "we", "you", "yall"):
            expected = {"i": "-m", "you": "-t", "we": "-mu", "yall": "-tu"}[src[0]]
            assert tgt[-1] == expected
    assert agreements > 100


def test_parallel_text_reader(tmp_path) -> None:
    src = tmp_path / "train.src"
    tgt = tmp_path / "train.tgt"
    lines = [(f"hello world {i % 7}", f"hallo welt {i % 5} x{i}") for i in range(60)]
    src.write_text("\n".join(s for s, _ in lines) + "\n\n")
    tgt.write_text("\n".join(t for _, t in lines) + "\n\n")
    space = dataclasses.replace(SPACE, tgt_vocab=20)
    corpus = parallel_text_corpus(src, tgt, space, valid_size=5, test_size=5, seed=0)
    assert len(corpus.train) == 50 and len(corpus.tgt_vocab) == 20
    assert corpus.src_vocab.tokens[:4] == SPECIALS
    assert any(UNK in t for _, t in corpus.train)  # x0..x59 do not all fit in 20 words
    assert max(i for _, t in corpus.train for i in t) < 20
    assert load_corpus(corpus.spec, space).valid == corpus.valid
    tgt.write_text("one line\n")
    with pytest.raises(CorpusError, match="lines"):
        parallel_text_corpus(src, tgt, space)
    with pytest.raises(CorpusError, match="cannot read"):
        parallel_text_corpus(tmp_path / "missing", tgt, space)


def test_vocabulary() -> None:
    vocab = Vocabulary.build([["b", "a", "b"], ["c"]], max_size=6)
    assert vocab.tokens == SPECIALS + ("b", "a")
    assert vocab.encode(["a", "zzz"]) == (5, UNK)
    assert vocab.decode([BOS, 4, 5, EOS, 4]) == ["b", "a"]
    assert vocab.decode([4, 999]) == ["b", "<unk>"]  # a model's vocabulary may be larger
    with pytest.raises(CorpusError):
        Vocabulary(("a", "b"))


def test_batches_pad_and_shift(corpus) -> None:
    batch = make_batch([((10, 11), (20, 21, 22)), ((12,), (23,))])
    assert batch.src.tolist() == [[10, 11, EOS], [12, EOS, PAD]]
    assert batch.prev_output.tolist() == [[BOS, 20, 21, 22], [BOS, 23, PAD, PAD]]
    assert batch.target.tolist() == [[20, 21, 22, EOS], [23, EOS, PAD, PAD]]
    assert batch.ntokens == 6
    batches = fixed_batches(corpus.valid, 64)
    assert sum(b.src.shape[0] for b in batches) == len(corpus.valid)
    first = [next(training_batches(corpus.train, 16, seed=1)).src for _ in range(2)]
    assert first[0].equal(first[1])

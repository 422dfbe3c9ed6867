from __future__ import annotations

import dataclasses

import pytest
import torch

from nas.corpus import fixed_batches, synthetic_corpus
from nas.evaluate import LossScorer, bleu, greedy_decode, validation_loss
from nas.grammar import SyntheticTaskConfig
from nas.supernet import SuperTransformer, extract_subtransformer
from nas.train import CheckpointError, TrainConfig, checkpoint_corpus, load_checkpoint, save_checkpoint, train_supernet
from profiler.model import EOS
from profiler.space import DesignSpace

TASK = SyntheticTaskConfig(nouns=12, adjectives=6, verbs=6, prepositions=3, p_relative=0.0,
                           train_size=3000, valid_size=64, test_size=32)
SPACE = DesignSpace(name="tiny", encoder_embed_dim=(48, 24), decoder_embed_dim=(48, 24),
                    encoder_layer_num=(2, 3), decoder_layer_num=(1, 2), encoder_ffn_embed_dim=(96, 48),
                    decoder_ffn_embed_dim=(96, 48), encoder_self_attention_heads=(4, 2),
                    decoder_self_attention_heads=(4, 2), decoder_ende_attention_heads=(4, 2),
                    decoder_arbitrary_ende_attn=(-1, 1), qkv_dim=32, src_vocab=64, tgt_vocab=96,
                    max_positions=48)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(TASK)


@pytest.fixture(scope="module")
def trained(corpus):
    torch.set_num_threads(1)
    net = SuperTransformer(SPACE, seed=0)
    batches = fixed_batches(corpus.valid, 64)
    before = [validation_loss(net, a, batches) for a in (SPACE.largest(), SPACE.smallest())]
    report = train_supernet(net, corpus, TrainConfig(steps=150, batch_sentences=32, lr=3e-3, warmup_steps=20))
    return net, before, report


def test_training_reduces_validation_loss(trained, corpus) -> None:
    net, before, report = trained
    after = LossScorer(net, corpus.valid)([SPACE.largest(), SPACE.smallest()])
    assert after[0] < before[0] - 1.0 and after[1] < before[1] - 1.0
    curve = [loss for _, loss in report["loss_curve"]]
    assert len(curve) == 3 and curve[-1] < curve[0]


def test_sandwich_rule_trains_and_is_seeded(corpus) -> None:
    def run() -> torch.Tensor:
        net = SuperTransformer(SPACE, seed=0)
        train_supernet(net, corpus, TrainConfig(steps=3, batch_sentences=8, sampling="sandwich", seed=4))
        return net.shared.decoder_layers[1].ffn.fc1.weight.detach().clone()

    first = run()
    assert torch.equal(first, run())
    assert not torch.equal(first, SuperTransformer(SPACE, seed=0).shared.decoder_layers[1].ffn.fc1.weight)


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, final_lr_ratio=0.1)
    assert config.lr_at(0) == pytest.approx(1e-4)
    assert config.lr_at(10) == pytest.approx(1e-3)
    assert config.lr_at(99) == pytest.approx(1e-4, rel=0.01)
    with pytest.raises(Exception, match="sampling"):
        TrainConfig(sampling="greedy")


def test_checkpoint_round_trip(trained, corpus, tmp_path) -> None:
    net, _, _ = trained
    path = tmp_path / "supernet.pt"
    save_checkpoint(path, net, corpus, extra={"train": {"steps": 150}})
    loaded, header = load_checkpoint(path)
    assert loaded.space == SPACE and header["train"] == {"steps": 150}
    assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True)["state_dict"].values())
    scorer_before, scorer_after = LossScorer(net, corpus.valid), LossScorer(loaded, corpus.valid)
    for arch in (SPACE.largest(), SPACE.smallest()):
        assert scorer_after([arch])[0] == pytest.approx(scorer_before([arch])[0], abs=2e-2)
    assert checkpoint_corpus(header, SPACE).valid == corpus.valid
    with pytest.raises(CheckpointError, match="other vocabularies"):
        checkpoint_corpus({**header, "tgt_vocab": header["tgt_vocab"][:-1]}, SPACE)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")  # torch.load died with IndexError on this
    for junk in ("junk.pt", "rows.csv"):
        with pytest.raises(CheckpointError, match="not a hatprof supernet checkpoint"):
            load_checkpoint(tmp_path / junk)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a hatprof supernet"):
        load_checkpoint(tmp_path / "other.pt")


def test_greedy_decoding_agrees_with_teacher_forcing(trained, corpus) -> None:
    net, _, _ = trained
    model = extract_subtransformer(net, SPACE.largest())
    batch = fixed_batches(corpus.valid[:8], 8)[0]
    hyps = greedy_decode(model, batch.src, max_len=40)
    for i, hyp in enumerate(hyps):
        prev = torch.tensor([[1, *hyp]])
        with torch.no_grad():
            argmax = model(batch.src[i:i + 1, : int((batch.src[i] != 0).sum())], prev).argmax(-1)[0].tolist()
        assert argmax[: len(hyp)] == list(hyp)
        if len(hyp) < 40:
            assert argmax[len(hyp)] == EOS
    score = bleu(net, SPACE.largest(), corpus.test, corpus.tgt_vocab)
    assert 0.0 <= score.score <= 100.0 and score.ref_len > 0


def test_larger_subtransformer_scores_better_after_training(trained, corpus) -> None:
    net, _, _ = trained
    largest, smallest = LossScorer(net, corpus.valid)([SPACE.largest(), SPACE.smallest()])
    assert largest < smallest


def test_checkpoint_keeps_space_fields(tmp_path, corpus) -> None:
    space = dataclasses.replace(SPACE, name="tiny2")
    save_checkpoint(tmp_path / "c.pt", SuperTransformer(space), corpus)
    assert load_checkpoint(tmp_path / "c.pt")[0].space == space

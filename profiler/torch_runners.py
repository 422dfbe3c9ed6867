"""HAT's timed workload on PyTorch: a TorchScript artifact, or the eager model as reference.

Same interface and beam-search semantics as `profiler.ort_runner.OnnxRunner`, with torch
ops, under `torch.inference_mode()` and `torch.set_num_threads(threads)`.
`profiler.workload.open_runner` picks a runner by format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from profiler.errors import ArtifactError
from profiler.model import SubTransformer
from profiler.space import ArchConfig, DesignSpace
from profiler.workload import BOS, backtrack, check_workload, dummy_source, read_manifest

KVList = list[tuple[Tensor, Tensor]]
StepFn = Callable[[Tensor, Tensor, KVList, KVList], tuple[Tensor, KVList]]


class _TorchRunner:
    """The decode loops, given the three graphs as callables."""

    def __init__(self, encode: Callable[[Tensor], Tensor], cross_kv: Callable[[Tensor], KVList],
                 decode_step: StepFn, cache_shapes: list[tuple[int, int]], src_vocab: int,
                 tgt_vocab: int, max_positions: int, seq_len: int, beam: int, threads: int):
        check_workload(seq_len, beam, threads, max_positions, tgt_vocab)
        torch.set_num_threads(threads)
        self.seq_len, self.beam, self.threads = seq_len, beam, threads
        self._encode, self._cross_kv, self._step = encode, cross_kv, decode_step
        self._cache_shapes, self._vocab, self._max_positions = cache_shapes, tgt_vocab, max_positions
        with torch.inference_mode():
            self._src = torch.from_numpy(dummy_source(seq_len, src_vocab))
            self._states = encode(self._src)
            self._steps = [torch.tensor(t) for t in range(seq_len)]
            self._bos = torch.full((beam, 1), BOS, dtype=torch.long)
            self._start_scores = torch.full((beam,), float("-inf"))
            self._start_scores[0] = 0.0
            self._origins = torch.empty((seq_len, beam), dtype=torch.long)
            self._tokens = torch.empty((seq_len, beam), dtype=torch.long)
        self._scores = self._start_scores

    def _empty_cache(self, batch: int) -> KVList:
        return [(torch.zeros(batch, h, 0, d),) * 2 for h, d in self._cache_shapes]

    def run_encoder(self) -> None:
        """The encoder over the dummy sentence (timed)."""
        with torch.inference_mode():
            self._encode(self._src)

    def run_decoder(self) -> None:
        """Cross keys/values once, then `seq_len` cached beam-search steps (timed)."""
        beam, vocab, step_fn = self.beam, self._vocab, self._step
        with torch.inference_mode():
            cross = self._cross_kv(self._states)
            cache = self._empty_cache(beam)
            tokens, scores = self._bos, self._start_scores
            for t, step in enumerate(self._steps):
                log_probs, cache = step_fn(tokens, step, cache, cross)
                scores, best = torch.topk((scores[:, None] + log_probs).view(-1), beam)
                origin = torch.div(best, vocab, rounding_mode="floor")
                token = best - origin * vocab
                self._origins[t] = origin
                self._tokens[t] = token
                tokens = token[:, None]
                cache = [(k.index_select(0, origin), v.index_select(0, origin)) for k, v in cache]
            self._scores = scores

    def beam_search(self) -> tuple[np.ndarray, np.ndarray]:
        """`run_decoder`, then its beams: tokens (beam, seq_len), best first, and their scores."""
        self.run_decoder()
        return backtrack(self._origins.numpy(), self._tokens.numpy()), self._scores.numpy().copy()

    def greedy_decode(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decode of the dummy sentence: tokens (steps,) and log-probs (steps, vocab)."""
        check_workload(steps, 1, 1, self._max_positions, self._vocab)
        tokens, log_probs = [], []
        with torch.inference_mode():
            cross = self._cross_kv(self._states)
            cache = self._empty_cache(1)
            token = torch.full((1, 1), BOS, dtype=torch.long)
            for t in range(steps):
                lp, cache = self._step(token, torch.tensor(t), cache, cross)
                token = lp.argmax(dim=-1, keepdim=True)
                tokens.append(int(token))
                log_probs.append(lp[0].numpy())
        return np.array(tokens, dtype=np.int64), np.stack(log_probs)

    def close(self) -> None:
        """Drop the graphs; the runner cannot be used afterwards."""
        self._encode = self._cross_kv = self._step = None


class EagerRunner(_TorchRunner):
    """The reference: the eager `SubTransformer` itself, in eval mode."""

    runtime = "pytorch"

    def __init__(self, model: SubTransformer, seq_len: int = 30, beam: int = 5, threads: int = 1):
        model.eval()
        self.model = model
        shapes = [(layer.self_attn.heads, layer.self_attn.head_dim) for layer in model.decoder_layers]
        super().__init__(model.encode, model.cross_kv, model.decode_step, shapes,
                         model.space.src_vocab, model.space.tgt_vocab, model.space.max_positions,
                         seq_len, beam, threads)


class TorchScriptRunner(_TorchRunner):
    """A TorchScript artifact's three traced graphs, loaded with `torch.jit.load`."""

    runtime = "torchscript"

    def __init__(self, artifact_dir: str | Path, seq_len: int = 30, beam: int = 5, threads: int = 1):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = m = read_manifest(self.artifact_dir, "torchscript")
        graphs = {}
        for graph, name in m["graphs"].items():
            path = self.artifact_dir / name
            try:
                graphs[graph] = torch.jit.load(str(path)).eval()
            except (OSError, RuntimeError) as exc:
                raise ArtifactError(f"cannot load TorchScript graph {path}: {exc}") from None
        encoder, cross_kv, decoder = graphs["encoder"], graphs["cross_kv"], graphs["decoder_step"]
        layers = len(m["decoder_layers"])

        def cross(states: Tensor) -> KVList:
            flat = cross_kv(states)
            return [(flat[2 * i], flat[2 * i + 1]) for i in range(layers)]

        def step(tokens: Tensor, t: Tensor, cache: KVList, cross: KVList) -> tuple[Tensor, KVList]:
            out = decoder(tokens, t, *(x for kv in cache for x in kv), *(x for kv in cross for x in kv))
            return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(layers)]

        super().__init__(encoder, cross, step,
                         [(layer["heads"], layer["head_dim"]) for layer in m["decoder_layers"]],
                         m["src_vocab"], m["tgt_vocab"], m["max_positions"], seq_len, beam, threads)


def load_eager_model(artifact_dir: str | Path) -> SubTransformer:
    """The `SubTransformer` of an eager artifact: rebuilt from its manifest, weights loaded safely."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir, "eager")
    model = SubTransformer(ArchConfig.from_dict(manifest["arch"]), DesignSpace.from_dict(manifest["space"]))
    try:
        state = torch.load(artifact_dir / manifest["graphs"]["weights"], weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ArtifactError(f"cannot load eager weights from {artifact_dir}: {exc}") from None
    return model.eval()

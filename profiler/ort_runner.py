"""Run an ONNX artifact with onnxruntime: HAT's timed workload on the device side.

Imports neither torch, pandas nor scikit-learn: an edge device needs only onnxruntime,
numpy and psutil. `run_encoder` and `run_decoder` are the timed calls, so the decode
loop keeps its per-step Python work small: feeds, step tensors and buffers are built
once at construction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from profiler.errors import ArtifactError
from profiler.workload import (
    BOS, backtrack, cache_names, check_workload, decoder_output_names, dummy_source, read_manifest,
)


def _session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ArtifactError(f"onnxruntime cannot load {path}: {exc}") from None


class OnnxRunner:
    """HAT's workload on onnxruntime's CPU provider: encoder once, `seq_len` beam-search steps."""

    runtime = "onnxruntime"

    def __init__(self, artifact_dir: str | Path, seq_len: int = 30, beam: int = 5, threads: int = 1):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir, "onnx")
        check_workload(seq_len, beam, threads, self.manifest["max_positions"], self.manifest["tgt_vocab"])
        self.seq_len, self.beam, self.threads = seq_len, beam, threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sessions = {graph: _session(self.artifact_dir / name, options)
                          for graph, name in self.manifest["graphs"].items()}
        self._encoder = self._sessions["encoder"]
        self._cross_kv = self._sessions["cross_kv"]
        self._decoder = self._sessions["decoder_step"]
        self._layers = len(self.manifest["decoder_layers"])
        self._vocab = self.manifest["tgt_vocab"]
        self._cache_names = cache_names(self._layers)
        self._cross_names = cache_names(self._layers, "cross")
        self._outputs = decoder_output_names(self._layers)
        self._src = {"src_tokens": dummy_source(seq_len, self.manifest["src_vocab"])}
        self._states = {"encoder_states": self._encoder.run(None, self._src)[0]}
        self._steps = [np.array(t, dtype=np.int64) for t in range(seq_len)]
        self._bos = np.full((beam, 1), BOS, dtype=np.int64)
        self._empty_beam_cache = self._empty_cache(beam)
        self._start_scores = np.full(beam, -np.inf, dtype=np.float32)
        self._start_scores[0] = 0.0
        self._candidates = np.empty((beam, self._vocab), dtype=np.float32)
        self._best = np.empty(beam, dtype=np.int64)
        self._score_buffers = (np.empty(beam, dtype=np.float32), np.empty(beam, dtype=np.float32))
        self._origins = np.empty((seq_len, beam), dtype=np.int64)
        self._tokens = np.empty((seq_len, beam), dtype=np.int64)
        self._scores = self._start_scores

    def _empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        feed = {}
        for i, layer in enumerate(self.manifest["decoder_layers"]):
            empty = np.zeros((batch, layer["heads"], 0, layer["head_dim"]), dtype=np.float32)
            feed[f"cache_k_{i}"] = feed[f"cache_v_{i}"] = empty
        return feed

    def _cross_feed(self) -> dict[str, np.ndarray]:
        return dict(zip(self._cross_names, self._cross_kv.run(None, self._states)))

    def run_encoder(self) -> None:
        """The encoder over the dummy sentence (timed)."""
        self._encoder.run(None, self._src)

    def run_decoder(self) -> None:
        """Cross keys/values once, then `seq_len` cached beam-search steps (timed).

        No EOS stopping: every call does HAT's full `seq_len` steps at beam `beam`.
        """
        beam, vocab, names, outputs = self.beam, self._vocab, self._cache_names, self._outputs
        run, candidates, flat = self._decoder.run, self._candidates, self._candidates.reshape(-1)
        best, scores, new_scores = self._best, self._score_buffers[0], self._score_buffers[1]
        feed = self._cross_feed()
        feed.update(self._empty_beam_cache)
        feed["tokens"] = self._bos
        scores[:] = self._start_scores
        for t, step in enumerate(self._steps):
            feed["step"] = step
            result = run(outputs, feed)
            np.add(scores[:, None], result[0], out=candidates)
            # Top-`beam` by repeated argmax: exact, best first, ties to the lowest index, and
            # 10-20x faster than np.argpartition + sort for beam 5 over 1k-32k candidates.
            for i in range(beam):
                j = flat.argmax()
                best[i] = j
                new_scores[i] = flat[j]
                flat[j] = -np.inf
            scores, new_scores = new_scores, scores
            origin, token = self._origins[t], self._tokens[t]
            np.divmod(best, vocab, out=(origin, token))
            feed["tokens"] = token[:, None]
            for name, cache in zip(names, result[1:]):
                feed[name] = cache.take(origin, axis=0)
        self._scores = scores

    def beam_search(self) -> tuple[np.ndarray, np.ndarray]:
        """`run_decoder`, then its beams: tokens (beam, seq_len), best first, and their scores."""
        self.run_decoder()
        return backtrack(self._origins, self._tokens), self._scores.copy()

    def greedy_decode(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decode of the dummy sentence: tokens (steps,) and log-probs (steps, vocab)."""
        check_workload(steps, 1, 1, self.manifest["max_positions"], self.manifest["tgt_vocab"])
        feed = self._cross_feed()
        feed.update(self._empty_cache(1))
        feed["tokens"] = np.full((1, 1), BOS, dtype=np.int64)
        tokens, log_probs = [], []
        for t in range(steps):
            feed["step"] = np.array(t, dtype=np.int64)
            result = self._decoder.run(self._outputs, feed)
            log_probs.append(result[0][0])
            tokens.append(int(result[0][0].argmax()))
            feed["tokens"] = np.array([[tokens[-1]]], dtype=np.int64)
            feed.update(zip(self._cache_names, result[1:]))
        return np.array(tokens, dtype=np.int64), np.stack(log_probs)

    def close(self) -> None:
        """Release the sessions; the runner cannot be used afterwards."""
        self._sessions.clear()
        self._encoder = self._cross_kv = self._decoder = None

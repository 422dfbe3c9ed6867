"""Latency predictors: train, evaluate, persist, and transfer to new hardware.

The search needs only `load_predictor(path)`, whose result has
`predict_archs(archs) -> ndarray of total latency (ms)` and `predict_frame(df)`.
"""
from __future__ import annotations

from predictor.core import DEFAULT_MODEL, MODELS, LatencyPredictor, train_predictor
from predictor.persistence import Predictor, load_predictor, save_predictor
from predictor.transfer import TransferPredictor, adapt

__all__ = ["DEFAULT_MODEL", "MODELS", "LatencyPredictor", "Predictor", "TransferPredictor",
           "adapt", "load_predictor", "save_predictor", "train_predictor"]

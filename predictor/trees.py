"""A fitted tree ensemble as plain arrays, evaluated with numpy.

scikit-learn's fitted trees live in a private Cython structure whose pickled form changes
between releases. Exporting each tree's public arrays (`tree_.children_left`, ...,
`tree_.value`) gives a form that saves as npz, loads under any library version and
predicts exactly as scikit-learn did.

Each tree is laid out as a perfect binary tree of the ensemble's depth, in breadth-first
order: a leaf above the bottom level becomes a split that always goes left (threshold
+inf) into copies of itself. Then every split of every tree is compared for a batch of
rows in one vectorised operation, and the walk from root to leaf is `depth` lookups
into those decisions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_CHUNK_ROWS = 2048


def export_trees(trees: Sequence, scale: float) -> dict[str, np.ndarray]:
    """Pack fitted `sklearn.tree` regressors into perfect-tree arrays; leaf values times `scale`.

    `feature`, `threshold`: (trees, 2**depth - 1) splits; `value`: (trees, 2**depth) leaves.
    """
    depth = max(t.tree_.max_depth for t in trees)
    feature = np.zeros((len(trees), 2 ** depth - 1), dtype=np.int64)
    threshold = np.full((len(trees), 2 ** depth - 1), np.inf)
    value = np.zeros((len(trees), 2 ** depth))
    for i, t in enumerate(trees):
        tree = t.tree_
        stack = [(0, 0, 0)]  # (sklearn node, level, index within the level)
        while stack:
            node, level, j = stack.pop()
            if level == depth:
                value[i, j] = tree.value[node, 0, 0] * scale
                continue
            left, right = tree.children_left[node], tree.children_right[node]
            if left < 0:  # a leaf above the bottom: both subtrees lead to it
                left = right = node
            else:
                feature[i, 2 ** level - 1 + j] = tree.feature[node]
                threshold[i, 2 ** level - 1 + j] = tree.threshold[node]
            stack += [(left, level + 1, 2 * j), (right, level + 1, 2 * j + 1)]
    return {"feature": feature, "threshold": threshold, "value": value}


def predict_trees(arrays: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Sum of the trees' leaf values for each row of `X`."""
    feature, threshold, value = arrays["feature"], arrays["threshold"], arrays["value"]
    n_trees, inner = feature.shape
    depth = int(np.log2(inner + 1))
    columns = feature.ravel()
    # scikit-learn sends a row right when float32(x) > threshold (float64). For float32 x
    # that equals x > (the threshold rounded down to float32), so compare in float32.
    limits = threshold.ravel().astype(np.float32)
    limits = np.where(limits > threshold.ravel(), np.nextafter(limits, np.float32(-np.inf)), limits)
    X = np.asarray(X, dtype=np.float32)
    leaf_base = np.arange(n_trees) * value.shape[1]
    values = value.ravel()
    out = np.empty(len(X))
    for start in range(0, len(X), _CHUNK_ROWS):
        rows = X[start:start + _CHUNK_ROWS]
        right = (np.take(rows, columns, axis=1) > limits).ravel()
        # Index of each (row, tree)'s root in `right`; node k of a level is root + 2**level - 1 + k.
        roots = np.arange(len(rows))[:, None] * (n_trees * inner) + np.arange(n_trees) * inner
        j = np.zeros((len(rows), n_trees), dtype=np.int64)
        for level in range(depth):
            j = 2 * j + right[roots + (2 ** level - 1) + j]
        out[start:start + len(rows)] = values[leaf_base + j].sum(axis=1)
    return out

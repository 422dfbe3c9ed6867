"""Predictor files: identical predictions in a fresh process, metadata, clear errors."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler.errors import PredictorError
from profiler.space import load_space
from predictor import adapt, load_predictor, save_predictor, train_predictor
from predictor.persistence import ARRAYS, FORMAT_VERSION, MANIFEST
from predictor.synthetic import synthetic_frame
from predictor.transfer import METHODS

ROOT = Path(__file__).resolve().parents[1]
_FAST = {"gbt": {"n_estimators": 30}, "ridge-gbt": {"n_estimators": 30},
         "mlp": {"max_steps": 30}, "hat-mlp": {"max_steps": 10, "hidden_layers": (32, 32)}}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame(120, seed=6)


@pytest.fixture(scope="module")
def saved(frame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pred") / "ridge.predictor"
    save_predictor(train_predictor(frame), path)
    return path


def _rewrite(src: Path, dst: Path, edit_manifest=None, edit_arrays=None) -> Path:
    with zipfile.ZipFile(src) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        with np.load(io.BytesIO(archive.read(ARRAYS))) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if edit_manifest:
        edit_manifest(manifest)
    if edit_arrays:
        edit_arrays(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with zipfile.ZipFile(dst, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest))
        archive.writestr(ARRAYS, buffer.getvalue())
    return dst


@pytest.mark.parametrize("model", list(_FAST) + ["ridge"])
def test_round_trip_predicts_identically(frame, tmp_path, model):
    pred = train_predictor(frame, model, params=_FAST.get(model))
    path = save_predictor(pred, tmp_path / f"{model}.predictor")
    archs = load_space("compact").sample_many(50, seed=11)
    loaded = load_predictor(path)
    np.testing.assert_array_equal(loaded.predict_archs(archs), pred.predict_archs(archs))
    assert loaded.metadata["metrics"] == pred.metadata["metrics"]


def test_fresh_process_gives_identical_predictions(saved, tmp_path):
    archs = load_space("compact").sample_many(200, seed=12)
    arch_file = tmp_path / "archs.json"
    arch_file.write_text(json.dumps([a.to_dict() for a in archs]))
    out = tmp_path / "pred.npy"
    script = ("import json, sys, numpy as np\n"
              "from profiler.space import ArchConfig\n"
              "from predictor import load_predictor\n"
              "archs = [ArchConfig.from_dict(d) for d in json.load(open(sys.argv[2]))]\n"
              "np.save(sys.argv[3], load_predictor(sys.argv[1]).predict_archs(archs))\n")
    subprocess.run([sys.executable, "-c", script, str(saved), str(arch_file), str(out)],
                   check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    np.testing.assert_array_equal(np.load(out), load_predictor(saved).predict_archs(archs))


def test_file_carries_its_metadata(saved):
    with zipfile.ZipFile(saved) as archive:
        manifest = json.loads(archive.read(MANIFEST))
    assert manifest["format"] == "hatprof-predictor" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["kind"] == "latency" and manifest["feature_set"] == "hat-cost"
    assert manifest["context"]["space"]["name"] == "compact"
    meta = manifest["metadata"]
    assert meta["data"]["device"] == "synthetic-desktop" and len(meta["data"]["sha256"]) == 64
    assert meta["metrics"]["holdout"]["n"] == 12
    assert {"numpy", "scikit-learn", "torch"} <= set(manifest["saved_with"])
    assert len(manifest["self_check"]) == 8


@pytest.mark.parametrize("method", METHODS)
def test_adapted_predictor_round_trip(frame, saved, tmp_path, method):
    few = synthetic_frame(120, seed=6, device="synthetic-pi").head(15)
    adapted = adapt(load_predictor(saved), few, method)
    path = save_predictor(adapted, tmp_path / "pi.predictor")
    loaded = load_predictor(path)
    assert loaded.method == method and loaded.corrections == adapted.corrections
    pd.testing.assert_frame_equal(loaded.predict_frame(frame), adapted.predict_frame(frame))
    assert loaded.intervals == adapted.intervals and loaded.intervals.rows == 15
    assert loaded.left_out == adapted.left_out and len(loaded.left_out) == 15
    predicted = adapted.predict_frame(frame)["predicted_ms"].to_numpy()
    bounds = [p.intervals.bounds(predicted, 0.9, **p.interval_inputs(frame)) for p in (adapted, loaded)]
    np.testing.assert_array_equal(bounds[0], bounds[1])


def test_intervals_are_stored_with_the_predictor(saved):
    loaded = load_predictor(saved)
    assert loaded.intervals.rows == 12  # the validation tenth of 120 rows
    assert loaded.intervals.method.startswith("split conformal")
    with zipfile.ZipFile(saved) as archive:
        manifest = json.loads(archive.read(MANIFEST))
    assert manifest["intervals"]["scores"] == list(loaded.intervals.scores)


def test_version_1_files_load_without_intervals(saved, tmp_path):
    def to_v1(manifest):
        manifest["format_version"] = 1
        del manifest["intervals"]
    loaded = load_predictor(_rewrite(saved, tmp_path / "v1.predictor", edit_manifest=to_v1))
    assert loaded.intervals is None
    np.testing.assert_array_equal(loaded.predict_frame(synthetic_frame(20, seed=3))["predicted_ms"],
                                  load_predictor(saved).predict_frame(synthetic_frame(20, seed=3))["predicted_ms"])


def test_old_adapted_files_ask_to_adapt_again(saved, tmp_path):
    adapted = save_predictor(adapt(load_predictor(saved), synthetic_frame(30, seed=8, device="synthetic-pi")),
                             tmp_path / "new.predictor")

    def to_old(manifest):
        manifest["base"] = manifest.pop("bases")[0]
    with pytest.raises(PredictorError, match="older hatprof.*adapt it again"):
        load_predictor(_rewrite(adapted, tmp_path / "old.predictor", edit_manifest=to_old))


def test_alone_adapted_files_of_the_previous_layout_load(saved, tmp_path):
    """Before corrections held it, an adapted "alone" predictor was the own model under
    "own/" with no corrections: it loads and predicts as that model."""
    few = synthetic_frame(30, seed=8, device="synthetic-pi")
    adapted = save_predictor(adapt(load_predictor(saved), few, "alone"), tmp_path / "alone.predictor")
    own = train_predictor(few)
    own_manifest, own_arrays = own.to_payload(prefix="own/")

    def to_previous(manifest):
        del manifest["feature_set"]
        manifest["corrections"], manifest["own"] = {}, own_manifest
    loaded = load_predictor(_rewrite(adapted, tmp_path / "previous.predictor", edit_manifest=to_previous,
                                     edit_arrays=lambda arrays: arrays.update(own_arrays)))
    other = synthetic_frame(20, seed=3)
    np.testing.assert_allclose(loaded.predict_frame(other)["predicted_ms"],
                               own.predict_frame(other)["predicted_ms"], rtol=1e-12)


@pytest.mark.parametrize("content, message", [
    (b"latency_ms,arch\n1.0,x\n", "looks like a CSV"),
    (pickle.dumps({"model": 1}), "looks like a pickle"),
    (b'{"format": "x"}', "is JSON"),
    (b"", "not a zip archive"),
])
def test_files_of_another_kind_are_refused(tmp_path, content, message):
    path = tmp_path / "other.predictor"
    path.write_bytes(content)
    with pytest.raises(PredictorError, match=message):
        load_predictor(path)


def test_zip_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(PredictorError, match="not a hatprof predictor"):
        load_predictor(path)
    with pytest.raises(PredictorError, match="no such predictor file"):
        load_predictor(tmp_path / "absent.predictor")


def _set(path: list[str], value):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(["format_version"], FORMAT_VERSION + 1), "reads up to version"),
    (_set(["features_version"], 0), "features are version 0"),
    (_set(["estimators", "encoder", "class"], "LGBMRegressor"), "unknown to this hatprof"),
    (_set(["kind"], "kernel"), "unknown predictor kind"),
])
def test_incompatible_files_are_refused(saved, tmp_path, edit, message):
    path = _rewrite(saved, tmp_path / "edited.predictor", edit_manifest=edit)
    with pytest.raises(PredictorError, match=message):
        load_predictor(path)


def test_changed_predictions_fail_the_self_check_naming_library_changes(saved, tmp_path):
    def scale(arrays):
        arrays["decoder/coef_"] = arrays["decoder/coef_"] * 1.01
    path = _rewrite(saved, tmp_path / "tampered.predictor", edit_arrays=scale,
                    edit_manifest=_set(["saved_with", "numpy"], "1.26.4"))
    with pytest.raises(PredictorError, match=r"differ from those recorded when it was saved "
                                             r"\(library changes: numpy 1.26.4 -> "):
        load_predictor(path)


def test_other_library_versions_load_when_the_self_check_passes(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "older.predictor",
                    edit_manifest=_set(["saved_with", "scikit-learn"], "1.3.0"))
    archs = load_space("compact").sample_many(20, seed=13)
    np.testing.assert_array_equal(load_predictor(path).predict_archs(archs),
                                  load_predictor(saved).predict_archs(archs))


def test_missing_arrays_are_a_clear_error(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "partial.predictor",
                    edit_arrays=lambda arrays: arrays.pop("encoder/coef_"))
    with pytest.raises(PredictorError, match="'encoder' of the predictor is incomplete"):
        load_predictor(path)

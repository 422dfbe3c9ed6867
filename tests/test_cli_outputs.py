"""Every command that writes a file checks it before the work and reads only the kind of
file it asks for: an unwritable output or a wrong-kind input is one `Error:` line on stderr,
a non-zero exit, no traceback and no partial file (#13)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hatprof.cli import main
from profiler.bundled import bundled_path

DATA = bundled_path("compact_local.csv")


def run(args, capsys):
    """Run the CLI in-process (an uncaught exception fails the test: a traceback); return
    (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        sys.exit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    (root / "blocker").write_text("a regular file, not a folder\n")
    (root / "rows.csv").write_text(DATA.read_text())
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return root


@pytest.fixture(scope="module")
def predictor_file(work) -> Path:
    path = work / "local.predictor"
    main(["predictor", "train", "--data", str(DATA), "--out", str(path), "--model", "ridge"])
    assert path.exists()
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _unwritable(work: Path, name: str) -> Path:
    return work / "blocker" / name


COMMANDS_WITH_OUTPUTS = {
    "search --out": lambda w, p, bad: ["search", "--predictor", p, "--latency-limit-ms", "40", "--out", bad],
    "search --plot": lambda w, p, bad: ["search", "--predictor", p, "--latency-limit-ms", "40",
                                        "--out", w / "r.json", "--plot", bad],
    "supernet train --out": lambda w, p, bad: ["supernet", "train", "--steps", "1", "--out", bad],
    "predictor train --out": lambda w, p, bad: ["predictor", "train", "--data", DATA, "--out", bad],
    "predictor predict --out": lambda w, p, bad: ["predictor", "predict", "--predictor", p, "--data", DATA,
                                                  "--out", bad],
    "predictor eval --json": lambda w, p, bad: ["predictor", "eval", "--predictor", p, "--data", DATA,
                                                "--json", bad],
    "predictor compare --plot": lambda w, p, bad: ["predictor", "compare", "--data", DATA, "--models", "ridge",
                                                   "--plot", bad],
    "dataset import-hat --out": lambda w, p, bad: ["dataset", "import-hat", DATA, "--out", bad],
    "agent token --out": lambda w, p, bad: ["agent", "token", "--out", bad],
    "measure --out": lambda w, p, bad: ["measure", "--device", "local", "--samples", "1", "--out", bad],
}


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_OUTPUTS))
@pytest.mark.parametrize("kind", ["under a file", "a directory"])
def test_an_unwritable_output_is_one_line_before_any_work(command, kind, work, predictor_file, capsys):
    bad = _unwritable(work, "out.file") if kind == "under a file" else work
    before = _files(work)
    code, out, err = run(COMMANDS_WITH_OUTPUTS[command](work, predictor_file, bad), capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(bad.name) in lines[0], err
    assert "Traceback" not in err
    assert _files(work) == before  # nothing written, not even the other outputs


WRONG_KIND_INPUTS = {
    "search --supernet CSV": (["search", "--predictor", "{pred}", "--supernet", "{work}/rows.csv",
                               "--latency-limit-ms", "40", "--out", "{work}/new/r.json"],
                              "not a hatprof supernet checkpoint"),
    "search --predictor CSV": (["search", "--predictor", "{work}/rows.csv", "--latency-limit-ms", "40",
                                "--out", "{work}/new/r.json"], "not a hatprof predictor file"),
    "predictor eval --predictor CSV": (["predictor", "eval", "--predictor", "{work}/rows.csv",
                                        "--data", "{work}/rows.csv", "--json", "{work}/new/m.json"],
                                       "not a hatprof predictor file"),
    "predictor predict --predictor PNG": (["predictor", "predict", "--predictor", "{work}/picture.png",
                                           "--data", "{work}/rows.csv", "--out", "{work}/new/p.csv"],
                                          "not a hatprof predictor file"),
    "predictor train --data PNG": (["predictor", "train", "--data", "{work}/picture.png",
                                    "--out", "{work}/new/x.predictor"], "picture.png"),
    "predictor eval --data PNG": (["predictor", "eval", "--predictor", "{pred}", "--data", "{work}/picture.png",
                                   "--json", "{work}/new/m.json"], "picture.png"),
    "dataset import-hat PNG": (["dataset", "import-hat", "{work}/picture.png", "--out", "{work}/new/h.csv"],
                               "picture.png"),
    "export --arch PNG": (["export", "--arch", "{work}/picture.png", "--out", "{work}/new/artifact"],
                          "picture.png"),
}


@pytest.mark.parametrize("case", sorted(WRONG_KIND_INPUTS))
def test_a_wrong_kind_of_input_file_is_one_line(case, work, predictor_file, capsys):
    template, expected = WRONG_KIND_INPUTS[case]
    args = [a.format(work=work, pred=predictor_file) for a in template]
    before = _files(work)
    code, out, err = run(args, capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], err
    assert _files(work) == before


def test_outputs_are_written_whole_with_missing_parents_and_the_usual_mode(work, predictor_file, capsys):
    old = os.umask(0o022)
    try:
        out = work / "deep" / "er" / "again.predictor"
        assert run(["predictor", "train", "--data", DATA, "--out", out, "--model", "ridge"], capsys)[0] == 0
        metrics = work / "deep" / "m" / "metrics.json"
        code, _, _ = run(["predictor", "eval", "--predictor", out, "--data", DATA, "--json", metrics], capsys)
        assert code == 0 and json.loads(metrics.read_text())["n"] == len(DATA.read_text().splitlines()) - 1
        imported = work / "deep" / "hat.csv"
        assert run(["dataset", "import-hat", DATA, "--out", imported], capsys)[0] == 0
    finally:
        os.umask(old)
    for path in (out, metrics, imported):
        assert os.stat(path).st_mode & 0o777 == 0o644, path
    assert not [p for p in (work / "deep").rglob("*.tmp*")]


def test_agent_token_refuses_to_overwrite_without_force(work, capsys):
    token = work / "agent.token"
    assert run(["agent", "token", "--out", token], capsys)[0] == 0
    first = token.read_text()
    code, _, err = run(["agent", "token", "--out", token], capsys)
    assert code == 1 and "--force" in err and token.read_text() == first
    assert run(["agent", "token", "--out", token, "--force"], capsys)[0] == 0
    assert token.read_text() != first and os.stat(token).st_mode & 0o777 == 0o600


def test_export_takes_a_space_sample_line_and_refuses_several(work, capsys):
    code, out, _ = run(["space", "sample", "--space", "compact", "-n", "2", "--seed", "1"], capsys)
    assert code == 0
    (work / "two.jsonl").write_text(out)
    code, _, err = run(["export", "--arch", work / "two.jsonl", "--out", work / "art"], capsys)
    assert code == 1 and "holds 2 architectures; export takes one" in err
    assert not (work / "art").exists()


def _sigint_disposition(request):
    import signal

    return str(signal.getsignal(signal.SIGINT))


def test_the_measuring_worker_leaves_ctrl_c_to_its_parent():
    """Ctrl-C reaches the worker too: it must ignore it (no traceback before 'Aborted.')."""
    import signal

    from profiler.worker import WorkerHandle

    worker = WorkerHandle({}, ops={"sigint": _sigint_disposition})
    try:
        assert worker.call({"op": "sigint"}, time_limit_s=120) == str(signal.SIG_IGN)
    finally:
        worker.stop()


def test_a_bare_hatprof_prints_its_usage_and_exits_0(capsys):
    code, out, err = run([], capsys)
    assert code == 0 and out.startswith("Usage: hatprof [OPTIONS] COMMAND") and "predictor" in out
    assert err == ""


def test_too_few_rows_is_one_error_without_a_warning_first(work, capsys, caplog):
    few = work / "few.csv"
    few.write_text("".join(DATA.read_text().splitlines(keepends=True)[:4]))  # header + 3 rows
    code, _, err = run(["predictor", "train", "--data", few, "--out", work / "few.predictor"], capsys)
    assert code == 1 and err.strip().splitlines() == ["Error: need at least 5 rows to train a predictor, got 3"]
    assert not (work / "few.predictor").exists()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_supernet_train_refuses_to_overwrite_a_checkpoint_without_force(work, capsys):
    existing = work / "existing.pt"
    existing.write_bytes(b"a checkpoint someone trained for an hour")
    code, _, err = run(["supernet", "train", "--steps", "1", "--out", existing], capsys)
    assert code == 1 and "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert existing.read_bytes() == b"a checkpoint someone trained for an hour"


def test_no_readme_command_writes_over_the_bundled_files():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    writes = [line for line in readme.splitlines() if line.startswith("    hatprof") and "--out datasets/" in line]
    assert writes == []


def test_a_predictor_of_another_space_is_refused_naming_both_spaces_and_the_fix(work, predictor_file, capsys):
    import pandas as pd

    from predictor.synthetic import synthetic_frame

    synthetic_frame(30, seed=0, space="iwslt14.de-en").to_csv(work / "iwslt.csv", index=False)
    iwslt = work / "iwslt.predictor"
    assert run(["predictor", "train", "--data", work / "iwslt.csv", "--out", iwslt, "--model", "ridge"], capsys)[0] == 0
    code, _, err = run(["search", "--predictor", iwslt, "--latency-limit-ms", "40", "--out", work / "s.json"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "the predictor is of space 'iwslt14.de-en'" in err and "of space 'compact'" in err
    assert "hatprof supernet train --space iwslt14.de-en" in err and "hatprof search --supernet" in err
    assert not (work / "s.json").exists()
    # evaluating the compact predictor on another space's rows: refused, not a MAPE of thousands of percent
    code, out, err = run(["predictor", "eval", "--predictor", predictor_file, "--data", work / "iwslt.csv"], capsys)
    assert code == 1 and out == "" and "rows of space 'iwslt14.de-en', the predictor is of space 'compact'" in err
    renamed = pd.read_csv(DATA)
    renamed["space_digest"] = "0123456789abcdef"  # same name, other content
    renamed.to_csv(work / "other_digest.csv", index=False)
    code, _, err = run(["predictor", "predict", "--predictor", predictor_file, "--data", work / "other_digest.csv"],
                       capsys)
    assert code == 1 and "whose content differs" in err


def test_demo_refuses_an_output_folder_it_cannot_create_before_any_work(work, capsys):
    bad = _unwritable(work, "demo-out")  # a folder under a regular file
    before = _files(work)
    code, out, err = run(["demo", "--out", bad], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--out" in lines[0] and "blocker" in lines[0], err
    assert "measuring" not in out and _files(work) == before

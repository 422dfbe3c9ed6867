from __future__ import annotations

import os
import stat

import pytest

from profiler.errors import DatasetError, HatprofError
from profiler.files import check_writable, write_atomically


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_check_writable_refuses_a_directory_and_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HatprofError, match="it is a directory"):
        check_writable(tmp_path)
    with pytest.raises(DatasetError, match=r"file is not a directory"):
        check_writable(tmp_path / "file" / "deeper" / "out.json", DatasetError)


def test_check_writable_accepts_missing_parents_without_creating_them(tmp_path):
    out = tmp_path / "a" / "b" / "out.json"
    assert check_writable(out) == out
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_refuses_a_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(HatprofError, match="not writable"):
            check_writable(folder / "new" / "out.json")
    finally:
        folder.chmod(0o755)


def test_write_atomically_creates_parents_with_the_usual_mode(tmp_path, umask_022):
    out = tmp_path / "new" / "out.json"
    write_atomically(out, "{}\n")
    assert out.read_text() == "{}\n"
    assert _mode(out) == 0o644
    write_atomically(tmp_path / "token", b"secret", private=True)
    assert _mode(tmp_path / "token") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "token"]


def test_write_atomically_leaves_nothing_when_the_writer_fails(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")

    def failing(path):
        path.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(out, failing)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with pytest.raises(HatprofError, match="cannot write"):
        write_atomically(tmp_path / "out.bin" / "x", b"data")


def test_write_atomically_with_a_writer_function(tmp_path):
    out = tmp_path / "w.txt"
    write_atomically(out, lambda p: p.write_text("via function"))
    assert out.read_text() == "via function"

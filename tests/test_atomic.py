"""Atomic outputs: a folder is replaced whole or not at all."""

from __future__ import annotations

import logging

import pytest

from pamela_lite import _atomic
from pamela_lite._atomic import atomic_dir


def _model(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(text)


def test_a_finished_folder_replaces_the_old_one_and_leaves_nothing_beside_it(tmp_path):
    _model(tmp_path / "m", "old")
    with atomic_dir(tmp_path / "m", "model.json", "model") as tmp:
        (tmp / "model.json").write_text("new")
    assert (tmp_path / "m" / "model.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_folders_an_interrupted_write_left_are_named_and_kept(tmp_path, caplog):
    # a kill -9 mid-fit left .m.abc12345.tmp (a whole model's worth) beside m, unmentioned
    _model(tmp_path / "m", "old")
    (tmp_path / ".m.abc12345.tmp").mkdir()
    (tmp_path / ".mine.x.tmp").mkdir()  # another output's: not named
    (tmp_path / ".m.v2.k3j4h5g6.tmp").mkdir()  # m.v2's, whose name starts like m's
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        with atomic_dir(tmp_path / "m", "model.json", "model") as tmp:
            (tmp / "model.json").write_text("new")
    assert "1 folder(s) left by an interrupted write of m (.m.abc12345.tmp)" in caplog.text
    assert (tmp_path / ".m.abc12345.tmp").is_dir()  # another run may be writing it: not removed here
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pamela_lite"):
        with atomic_dir(tmp_path / "clean", "model.json", "model") as tmp:
            (tmp / "model.json").write_text("new")
    assert "interrupted" not in caplog.text


def test_an_error_while_writing_keeps_the_old_folder(tmp_path):
    _model(tmp_path / "m", "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "m", "model.json", "model") as tmp:
            (tmp / "model.json").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "m" / "model.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def _exchange_works(tmp_path) -> bool:
    (tmp_path / "probe_a").mkdir()
    (tmp_path / "probe_b").mkdir()
    works = _atomic._exchange(tmp_path / "probe_a", tmp_path / "probe_b")
    (tmp_path / "probe_a").rmdir()
    (tmp_path / "probe_b").rmdir()
    return works


def test_the_swap_is_one_step_so_the_folder_is_never_missing(tmp_path, monkeypatch):
    # With two renames a kill between them left no folder at the path; the swap no longer renames.
    if not _exchange_works(tmp_path):
        pytest.skip("this system or file system has no one-step exchange (Linux renameat2)")
    _model(tmp_path / "m", "old")

    def killed(*args):
        raise RuntimeError("killed between the renames")

    monkeypatch.setattr(_atomic.os, "replace", killed)
    with atomic_dir(tmp_path / "m", "model.json", "model") as tmp:
        (tmp / "model.json").write_text("new")
    assert (tmp_path / "m" / "model.json").read_text() == "new"


def test_where_the_exchange_is_missing_two_renames_still_replace_the_folder(tmp_path, monkeypatch):
    _model(tmp_path / "m", "old")
    monkeypatch.setattr(_atomic, "_exchange", lambda a, b: False)
    with atomic_dir(tmp_path / "m", "model.json", "model") as tmp:
        (tmp / "model.json").write_text("new")
    assert (tmp_path / "m" / "model.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]

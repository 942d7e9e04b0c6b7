"""The public API: package-level imports, a scikit-learn estimator, console commands with help."""

from __future__ import annotations

import doctest
import signal
import subprocess
import sys
import time

import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from pamela_lite import __main__ as console
from pamela_lite.cli import CONSOLE_ENV
from pamela_lite.model import PersonalScorer

TOOLS = ("fit", "predict", "evaluate", "export", "score", "embed", "events")


def test_public_names_import_from_the_package():
    import pamela_lite
    from pamela_lite import EdgeScorer, PersonalScorer

    for name in ("InputError", "Scale", "evaluate_scores", "load_dataset", "read_embeddings"):
        assert hasattr(pamela_lite, name), name

    assert PersonalScorer.__module__ == "pamela_lite.model" and EdgeScorer.__module__ == "pamela_lite.edge"


def test_importing_the_package_loads_nothing_heavy():
    code = "import sys, pamela_lite; print(sorted(m for m in ('numpy', 'polars', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_clone_gives_an_unfitted_estimator_with_the_same_parameters():
    model = PersonalScorer(factors=7, use_head=False)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    assert copy.set_params(factors=3).factors == 3


def test_an_unfitted_estimator_says_so():
    with pytest.raises(NotFittedError, match="not fitted"):
        PersonalScorer().fold_in(None, None)


def test_the_estimators_examples_run_as_a_doctest():
    tests = doctest.DocTestFinder().find(PersonalScorer, "PersonalScorer", globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("tool", TOOLS)
def test_each_commands_help_is_plain_text_with_one_example(tool, monkeypatch):
    import importlib

    monkeypatch.setenv(CONSOLE_ENV, "1")
    text = importlib.import_module(f"pamela_lite.{tool}").build_parser().format_help()
    assert "``" not in text and ":func:" not in text
    assert text.count("example:") == 1 and f"pamela-lite {tool} --" in text.split("example:")[1]


def test_console_lists_every_command_with_an_example(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in (*TOOLS, "demo")) and "example:" in out


def test_console_runs_the_tool_of_the_command(capsys):
    with pytest.raises(SystemExit) as done:
        console.main(["demo", "--help"])
    assert done.value.code == 0 and "pamela-lite demo --out" in capsys.readouterr().out


def test_unknown_console_command_exits_2(capsys):
    assert console.main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


def test_console_entry_point_is_declared():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pamela-lite"] == "pamela_lite.__main__:main"


def test_ctrl_c_while_a_command_imports_its_libraries_prints_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "pamela_lite.fit", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.25)  # python is up, the package is imported, polars/lightgbm/sklearn are loading
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and err.strip() == "interrupted; nothing was written"
    assert proc.returncode == 130


def test_ctrl_c_during_a_command_does_not_claim_nothing_was_written(capsys):
    # embed and score --dask keep their finished parts on purpose; the old line said nothing was written
    from pamela_lite.cli import run

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run(interrupted) == 130
    assert capsys.readouterr().err.startswith("interrupted: no finished output was replaced (embed and score --dask keep")


def test_demo_help_carries_its_own_example_line(capsys, monkeypatch):
    # the console printed demo's example after its help had exited: `pamela-lite demo --help | head -1`
    # then ended in a BrokenPipeError traceback, and `python -m pamela_lite.demo --help` had no example
    from pamela_lite import demo
    from pamela_lite.cli import CONSOLE_ENV

    monkeypatch.delenv(CONSOLE_ENV, raising=False)  # a console test before may have set it

    with pytest.raises(SystemExit) as done:
        demo.main(["--help"])
    assert done.value.code == 0 and "example:\n  python -m pamela_lite.demo --out runs/demo_world" in capsys.readouterr().out

"""What every command-line tool shares: error handling, logging, table output."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, NoReturn

import polars as pl

from ._atomic import atomic_file
from .errors import InputError, preview

log = logging.getLogger("pamela_lite")

EXIT_INPUT = 2
DEBUG_ENV = "PAMELA_LITE_DEBUG"
# How the tools are invoked: "python -m pamela_lite.<tool>", or "pamela-lite <tool>" when the
# console entry point (pamela_lite.__main__) dispatches; --help and examples follow it.
CONSOLE_ENV = "PAMELA_LITE_CONSOLE"


def prog(tool: str) -> str:
    return f"pamela-lite {tool}" if os.environ.get(CONSOLE_ENV) else f"python -m pamela_lite.{tool}"


def plain(text: str) -> str:
    """Docstring text for a terminal: RST literals (double backticks) and roles removed, one paragraph."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return " ".join(text.replace("``", "").split())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


class _HelpFormatterDefaults(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default, except "(default: None)": a required argument or an option without a
    default has none to tell (its help says what happens when it is left out)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line, exit 2 (the rule for every bad input): the usage
    block argparse prints first would bury the one line that says what is wrong; --help shows it.
    Every tool answers ``--version``."""

    def __init__(self, *args, **kwargs):
        from . import __version__

        # No abbreviations: score --dask took "--user p0007" for its "--users FILE" and looked for a
        # file named p0007; a prefix that names one option today can name another tomorrow.
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.add_argument("-V", "--version", action="version", version=f"pamela_lite {__version__}")

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


MAX_SEED = 2**32 - 1  # the widest seed every library here takes (scikit-learn's random_state)


def seed_arg(text: str) -> int:
    """argparse type of ``--seed``: a whole number from 0 to MAX_SEED (numpy refuses negative seeds,
    scikit-learn larger ones)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"takes a whole number from 0 to {MAX_SEED}, not {text}")
    return value


def parser_for(tool: str, description: str, example: str, defaults: bool = False) -> Parser:
    """A parser with a plain-text description and one example (``{prog}`` is the command)."""
    name = prog(tool)
    return Parser(
        prog=name, description=textwrap.fill(plain(description), 88),
        epilog="example:\n  " + example.format(prog=name),
        formatter_class=_HelpFormatterDefaults if defaults else _HelpFormatter)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call a CLI's main; bad input → one line on stderr and exit 2, never a traceback.

    Set PAMELA_LITE_DEBUG=1 to see the traceback of an unexpected error.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted: no finished output was replaced (embed and score --dask keep the parts they "
              "finished, for the next run to resume from)", file=sys.stderr)
        return 130
    except Exception as err:  # an unexpected failure is still one line unless debugging
        if os.environ.get(DEBUG_ENV):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"error: unexpected {type(err).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 1


def parse_kshot(text: str) -> tuple[int, ...]:
    """``"0,10,50"`` → (0, 10, 50)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(None, f"--kshot takes whole numbers separated by commas, not {text!r}") from None
    if not values or min(values) < 0:
        raise InputError(None, f"--kshot takes whole numbers >= 0, not {text!r}")
    return values


TABLE_SUFFIXES = (".csv", ".parquet", ".json")


def check_table_path(path: str | Path) -> Path:
    """Refuse an output name we cannot write, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder: name an output file in it (.csv, .parquet or .json)")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(path, f"unknown output type {path.suffix!r}; use .csv, .parquet or .json")
    refuse_model_file(path)
    return path


def output_path(text: str) -> Path:
    """argparse type of ``--out``: refused at once when a folder on its way is a file, or the folder
    the output goes in takes no new file (the atomic write makes its temporary file there), since
    the write would otherwise fail only after all the work (an unexpected FileExistsError)."""
    path = Path(text)
    for parent in path.parents:  # the nearest first: only the first that exists matters
        try:
            present = parent.exists() or parent.is_symlink()  # a broken link is in the way too
            folder = parent.is_dir()
        except OSError:  # a folder we may not look into: the write itself will say so
            break
        if present:
            if not folder:
                what = "a broken link" if parent.is_symlink() and not parent.exists() else "a file"
                raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is {what}, not a folder")
            if not _writable(parent):
                raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is a folder this user cannot "
                                                 f"write in (or a read-only or virtual file system)")
            break
    return path


def output_folder(text: str) -> Path:
    """argparse type of an ``--out`` folder written *into* (a resumable job's partitions), not
    replaced: an existing folder must take new files itself; otherwise as :func:`output_path`."""
    path = Path(text)
    if path.is_dir():
        if not _writable(path):
            raise argparse.ArgumentTypeError(f"cannot write into {text}: a folder this user cannot write in "
                                             f"(or a read-only or virtual file system)")
        return path
    return output_path(text)


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`, tried with a temporary file (as the atomic
    write will make one there): permission bits do not tell for root, read-only mounts or /proc."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".pamela_lite.", suffix=".probe")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def refuse_model_file(path: Path) -> None:
    """An output is never written over a file of the model folder it is in (fit's metrics included)."""
    from .fitted import MODEL_FILES  # here, not at the top: every command imports cli, and fitted pulls numpy in

    if (path.parent / "model.json").exists() and path.name in (*MODEL_FILES, "metrics.json"):
        raise InputError(path, "is a file of the model folder it is in: it is not replaced; write the output elsewhere")


def write_table(frame: pl.DataFrame, path: str | Path) -> None:
    """Write a table by its suffix (.csv, .parquet, .json), atomically."""
    path = check_table_path(path)
    suffix = path.suffix.lower()
    writers = {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".json": frame.write_json}
    with atomic_file(path, suffix) as tmp:
        writers[suffix](tmp)


class Stopwatch:
    """Log how long each step takes (to stderr), so long work is never silent."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()

    def step(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal; in a log file, the plain step lines are enough."""
    return not quiet and sys.stderr.isatty()


def report_json(value) -> str:
    """`value` (metrics rows, a fit's report) as JSON that strict parsers read: a metric with nothing
    to measure (NaN) or an infinity is written as null, not as the bare NaN Python writes."""
    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {key: strict(item) for key, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(item) for item in v]
        return v
    return json.dumps(strict(value), indent=1, allow_nan=False)


def refuse_rating_context(fitted, source) -> None:
    """Context ratings mean nothing to a scorer fitted on events alone (`fitted.events_only`): its
    scale is a preference's, so they would be misread, or refused as outside it."""
    if fitted.events_only:
        raise InputError(source, "rating context for a scorer fitted on events alone (its scores are preferences, "
                                 "not ratings): fold people in from what they did, with predict --context-events")


REFIT_KNOWN = "pass --refit-known to do so, or rename them"
NO_REFIT = "rename them (this command cannot replace a known person's state; predict --refit-known can)"


def refuse_known_context(context_ids: pl.Series, known_ids, source, refit_known: bool,
                         remedy: str = REFIT_KNOWN) -> None:
    """A --context naming users the model already knows would replace their stored state: refuse,
    saying what to do (`remedy`: NO_REFIT for commands without --refit-known).

    Ids are compared as text when the two sides type them differently (see data.comparable_ids).
    """
    from .data import comparable_ids

    given, known = comparable_ids(context_ids.unique(maintain_order=True), pl.Series(list(known_ids)))
    overlap = context_ids.unique(maintain_order=True).filter(given.is_in(known.implode()))
    if len(overlap) and not refit_known:
        raise InputError(source, f"{len(overlap)} participant(s) in the context are already known to the model: "
                                 f"{preview(overlap.to_list())}; their stored state would be replaced by a fold-in "
                                 f"of this context alone: {remedy}")
    if len(overlap):
        log.warning(f"warning: {source}: --refit-known: the stored state of {len(overlap)} known participant(s) "
                    f"is replaced by a fold-in of this context alone (with --add-to-model, so are the ratings and "
                    f"events the model folder kept of them)")


def read_new_people(path: Path, prior) -> pl.DataFrame:
    """A --people file (:func:`pamela_lite.data.read_people`); demographics the model's `prior`
    cannot use are reported once (:func:`warn_unknown_demographics`)."""
    from .data import read_people

    people = read_people(path)
    warn_unknown_demographics(people, prior, path)
    return people


def refuse_known_people(people: pl.DataFrame, known_ids, source, *given: pl.DataFrame | None,
                        from_demographics: frozenset[str] = frozenset(), refit_known: bool = False) -> None:
    """People the model knows, named in --people but in no ratings or events given with it, are
    refused: they would be scored from demographics alone instead of their own state (and with
    --add-to-model lose their kept ratings). Those in a context follow its rule (--refit-known);
    so do the ids (text) in `from_demographics`: people the model knows from their demographics
    alone, whose demographics --refit-known may correct."""
    from .data import comparable_ids

    others = [f["participant_id"].cast(pl.String) for f in given if f is not None]
    alone = people["participant_id"]
    if others:
        alone = alone.filter(~alone.cast(pl.String).is_in(pl.concat(others).implode()))
    if refit_known:
        alone = alone.filter(~alone.cast(pl.String).is_in(list(from_demographics)))
    ids, known = comparable_ids(alone, pl.Series(list(known_ids)))
    overlap = alone.filter(ids.is_in(known.implode()))
    if not len(overlap):
        return
    if set(overlap.cast(pl.String).to_list()) <= from_demographics:
        remedy = "they were added from demographics alone: add --refit-known to correct them"
    else:
        remedy = ("--people is for people with nothing rated (the model scores known people from their own state): "
                  "leave them out, or give their ratings as --context with --refit-known to replace that state")
    raise InputError(source, f"{len(overlap)} participant(s) are already known to the model: "
                             f"{preview(overlap.to_list())}; {remedy}")


def warn_demographic_conflicts(context: pl.DataFrame, people: pl.DataFrame, source) -> None:
    """One warning naming the people whose --people demographics (`source`) differ from those their
    context ratings carry: the --people values are used. Both tables hold ages in years (as
    ``read_ratings`` and ``read_people`` leave them)."""
    from .data import person_demographics

    columns = [c for c in ("age", "gender", "nationality") if c in context.columns and c in people.columns]
    if not columns:
        return
    theirs = person_demographics(context).select(pl.col("participant_id").cast(pl.String),
                                                 *(pl.col(c).cast(pl.String).alias(f"_{c}") for c in columns))
    given = people.select(pl.col("participant_id").cast(pl.String), *(pl.col(c).cast(pl.String) for c in columns))
    both = given.join(theirs, on="participant_id")
    differ = both.filter(pl.any_horizontal(pl.col(c).is_not_null() & pl.col(f"_{c}").is_not_null()
                                           & (pl.col(c) != pl.col(f"_{c}")) for c in columns))
    if differ.height:
        log.warning(f"warning: {source}: the demographics of {differ.height} person(s) differ from those in their "
                    f"context ratings; this file's are used: {preview(differ['participant_id'].to_list())}")


def warn_unknown_demographics(frame: pl.DataFrame, prior, source) -> None:
    """One warning listing gender/nationality values the model's demographic `prior` never saw (they
    count as unknown), and ages given to a model fitted without any (they change no score)."""
    if "age" in frame.columns and frame["age"].drop_nulls().len() and not prior.knows_ages:
        log.warning(f"warning: {source}: the model was fitted without ages, so the ages given here change no score")
    parts = []
    for column, known in {"gender": prior.genders, "nationality": prior.nationalities}.items():
        if column in frame.columns:
            values = frame[column].drop_nulls().cast(pl.String).unique(maintain_order=True)
            odd = values.filter(~values.is_in(pl.Series(list(known), dtype=pl.String).implode()))
            if len(odd):
                parts.append(f"{column} {preview(odd.to_list())}")
    if parts:
        log.warning(f"warning: {source}: value(s) the model was not fitted with are treated as unknown: "
                    + "; ".join(parts))

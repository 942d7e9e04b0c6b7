"""pamela_lite: predict how much one particular person will like an image.

Images become embeddings once (an ONNX encoder, pamela_lite.embed); a personal scorer
(population head + implicit factor model + LightGBM residual head, pamela_lite.model) is
fitted on ratings (python -m pamela_lite.fit, or pamela-lite fit) and exported to one ONNX file
for devices (pamela_lite.edge).

The public names are importable from the package itself, e.g.
``from pamela_lite import PersonalScorer, EdgeScorer, load_dataset``. They are loaded on first
use, so importing the package (or pamela_lite.edge on a device) pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, on first attribute access)
_PUBLIC = {
    "PersonalScorer": "model",
    "EdgeScorer": "edge", "UnknownUsers": "edge",
    "load_dataset": "data", "read_ratings": "data", "read_pairs": "data", "read_embeddings": "data",
    "validate_ratings": "data", "Dataset": "data", "Embeddings": "data", "Scale": "data",
    "InputError": "errors",
    "evaluate_scores": "metrics",
    "evaluate_models": "protocol", "kshot_split": "protocol",
    "export_scorer": "onnx_scorer", "FittedScorer": "fitted",
}
_RENAMED = {"export_scorer": "export"}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pamela_lite' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def _quiet_interrupt(kind, value, traceback) -> None:
    """Ctrl-C while a command is still importing its libraries: one line, no traceback, exit 130.

    Some libraries turn a Ctrl-C during their own import into another error (numpy: an
    ImportError), so the signal itself is noted, not only the exception type.
    """
    if _sigint_seen or issubclass(kind, KeyboardInterrupt):
        print("interrupted; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)
    _default_hook(kind, value, traceback)


def _note_sigint(signum, frame):
    global _sigint_seen
    _sigint_seen = True
    raise KeyboardInterrupt


# `python -m pamela_lite.<tool>` imports this package while sys.argv[0] is still "-m": only then
# (a command line, not a library import) does Ctrl-C during the heavy imports end quietly.
_default_hook = sys.excepthook
_sigint_seen = False
if sys.argv[:1] == ["-m"]:
    import os
    import signal

    # OpenMP threads (LightGBM, implicit) sleep instead of spinning while they wait, so a fit
    # beside other busy processes does not burn cores it cannot use (set before libgomp loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    sys.excepthook = _quiet_interrupt
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note_sigint)

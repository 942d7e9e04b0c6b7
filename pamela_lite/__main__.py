"""The console entry point: pamela-lite fit|predict|evaluate|export|score|cache|embed|steer|events|demo.

Each command is the same tool as python -m pamela_lite.<command>, with the same arguments; the
tool's module is imported only once its command is chosen, so pamela-lite --help is instant.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "fit": ("fit and evaluate a personal scorer (default: on the demo world)",
            "pamela-lite fit --data /data/PAMELA --out runs/pamela"),
    "predict": ("score (participant, image) pairs with a fitted model folder",
                "pamela-lite predict --model runs/model --pairs pairs.csv --embeddings e.parquet --out scores.csv"),
    "evaluate": ("evaluate a fitted model on a dataset, beside baselines",
                 "pamela-lite evaluate --model runs/model --data runs/demo_world"),
    "export": ("export a model folder to one ONNX scorer, its parameters and its users file",
               "pamela-lite export --model runs/model --out runs/scorer.onnx"),
    "score": ("score pairs or rank a gallery with an exported ONNX scorer",
              "pamela-lite score --scorer runs/scorer.onnx --top 10 --user p0007 --embeddings e.parquet --out top.csv"),
    "cache": ("cache a catalogue's image features for an exported scorer (two-stage scoring)",
              "pamela-lite cache --scorer runs/scorer.onnx --embeddings e.parquet --out runs/catalogue.features.npz"),
    "embed": ("turn images into embeddings with an ONNX image encoder",
              "pamela-lite embed --encoder clip_b32.onnx --images photos/ --out embeddings.parquet"),
    "steer": ("steer a text-to-image prompt toward one person (or the population) within a budget",
              "pamela-lite steer --model runs/model --user p0007 --prompt 'a portrait photo' --out runs/steer"),
    "events": ("check an events file (as fit --events reads it) and say what it holds",
               "pamela-lite events --events runs/demo_events/events.parquet --embeddings e.parquet"),
    "demo": ("write the deterministic PAMELA-shaped demo world",
             "pamela-lite demo --out runs/demo_world --seed 0"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pamela-lite COMMAND [ARGS ...]   (pamela-lite COMMAND --help for its arguments; --version)", "",
             "Predict how much one particular person will like an image.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "example:", "  " + COMMANDS["fit"][1]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if argv[:1] in (["-V"], ["--version"]):
        from . import __version__

        print(f"pamela_lite {__version__}")
        return 0
    if not argv:  # a usage error: the usage goes where errors go, so a pipe does not take it for output
        print(usage(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    os.environ["PAMELA_LITE_CONSOLE"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pamela_lite/__init__.py
    try:
        from .cli import run

        module = importlib.import_module(f".{command}", __package__)
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    return run(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())

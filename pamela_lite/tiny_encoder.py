"""A tiny ONNX image encoder, built with onnx.helper: ``python -m pamela_lite.tiny_encoder``.

Conv (patchify) → ReLU → global average pool → linear, with seeded random weights. It is no
good at telling taste, but it has the shape of a real image tower (NCHW pixels in, one vector
out), so tests, benchmarks and a first try of ``pamela_lite.embed`` run without torch or any
download. A real encoder comes from ``embeddings/export_encoder.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .cli import Parser, output_path, run
from .errors import InputError


def build(size: int = 32, dim: int = 16, channels: int = 8, patch: int = 4, seed: int = 0) -> onnx.ModelProto:
    """An encoder taking float32 [N, 3, size, size] and returning [N, dim]."""
    rng = np.random.default_rng(seed)
    conv = rng.normal(0, 0.5, (channels, 3, patch, patch)).astype(np.float32)
    proj = rng.normal(0, 1.0 / np.sqrt(channels), (channels, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["pixels", "conv_w"], ["patches"], kernel_shape=[patch, patch],
                         strides=[patch, patch]),
        helper.make_node("Relu", ["patches"], ["active"]),
        helper.make_node("GlobalAveragePool", ["active"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        initializer=[numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(proj, "proj")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="pamela_lite")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write(path: str | Path, size: int = 32, dim: int = 16, sidecar: dict | None = None) -> Path:
    """Save the encoder (and, if given, its preprocessing sidecar) and return its path."""
    path = Path(path)
    onnx.save(build(size, dim), path)
    if sidecar is not None:
        path.with_name(path.stem + ".preprocess.json").write_text(json.dumps(sidecar))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pamela_lite.tiny_encoder", description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=output_path, required=True, help="ONNX file to write")
    parser.add_argument("--size", type=int, default=32, help="input image side in pixels (default 32)")
    parser.add_argument("--dim", type=int, default=16,
                        help="embedding dimension (default 16: pass your scorer's, e.g. 512); the vectors span at "
                             "most 8 directions whatever it is (8 channels): a pipeline check, not a taste encoder")
    args = parser.parse_args(argv)
    if args.size < 8 or args.dim < 1:  # the smallest image embed reads (Preprocess.check), one value at least
        parser.error(f"--size must be at least 8 and --dim at least 1, not {args.size} and {args.dim}")
    if not args.out.parent.is_dir():
        raise InputError(args.out.parent, "no such folder to write the encoder into")
    try:
        write(args.out, args.size, args.dim)
    except OSError as err:
        raise InputError(args.out, f"cannot write ({err.strerror or type(err).__name__})") from None
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

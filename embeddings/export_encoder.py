"""Export a CLIP or SigLIP image tower to ONNX, with its preprocessing sidecar.

Run this once, on a machine that has torch and the model weights on disk; the result is all
``python -m pamela_lite.embed`` needs (onnxruntime only, no torch). Nothing is downloaded:
weights are read from a local folder (``--hf-dir``, a Hugging Face model folder saved with
``save_pretrained``) or a local open_clip checkpoint (``--open-clip NAME --checkpoint FILE``).

    pip install torch transformers           # or: open_clip_torch
    python embeddings/export_encoder.py --hf-dir /models/clip-vit-base-patch32 --out clip_b32.onnx
    python -m pamela_lite.embed --encoder clip_b32.onnx --images /data/PAMELA/images \\
        --pamela /data/PAMELA --out /data/PAMELA/embeddings.parquet

The sidecar ``<out>.preprocess.json`` records the input size, resize/crop, mean/std and that
embeddings are L2-normalised, read from the model's own processor configuration.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

# Weights come from disk only; the toolkit never reaches a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def hf_tower(folder: Path):
    """(torch module pixels → embedding, preprocessing dict) from a local Hugging Face folder."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    kind = config.model_type
    if kind in ("clip", "clip_vision_model"):
        from transformers import CLIPVisionModelWithProjection as Model
    elif kind in ("siglip", "siglip_vision_model"):
        from transformers import SiglipVisionModel as Model
    else:
        raise SystemExit(f"{folder}: model type {kind!r} is not a CLIP or SigLIP model")
    model = Model.from_pretrained(folder, local_files_only=True).eval()

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            out = self.model(pixel_values=pixels)
            return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output

    vision = getattr(config, "vision_config", config)
    preprocess = _processor_settings(folder, vision.image_size, kind.startswith("siglip"))
    return Tower().eval(), preprocess, vision.image_size


def _processor_settings(folder: Path, size: int, siglip: bool) -> dict:
    settings = {"input_size": int(size), "l2_normalize": True, "channel_order": "RGB", "layout": "NCHW"}
    path = folder / "preprocessor_config.json"
    if path.exists():
        proc = json.loads(path.read_text())
        settings["mean"] = proc.get("image_mean", [0.48145466, 0.4578275, 0.40821073])
        settings["std"] = proc.get("image_std", [0.26862954, 0.26130258, 0.27577711])
        settings["center_crop"] = bool(proc.get("do_center_crop", not siglip))
        settings["resize"] = "shortest" if settings["center_crop"] else "squash"
        settings["interpolation"] = "bicubic" if proc.get("resample", 3) == 3 else "bilinear"
    elif siglip:  # SigLIP squashes to the square and uses mean = std = 0.5
        settings.update(mean=[0.5] * 3, std=[0.5] * 3, center_crop=False, resize="squash", interpolation="bilinear")
    return settings


def open_clip_tower(name: str, checkpoint: Path):
    import open_clip
    import torch

    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    normalize = [t for t in transform.transforms if t.__class__.__name__ == "Normalize"][0]

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = model.visual

        def forward(self, pixels):
            return self.visual(pixels)

    preprocess = {"input_size": int(size), "resize": "shortest", "center_crop": True,
                  "mean": list(normalize.mean), "std": list(normalize.std), "channel_order": "RGB",
                  "layout": "NCHW", "l2_normalize": True, "interpolation": "bicubic"}
    return Tower().eval(), preprocess, size


def export(tower, preprocess: dict, size: int, out: Path, opset: int = 17) -> None:
    import torch

    dummy = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(tower, (dummy,), str(out), input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "N"}, "embedding": {0: "N"}}, opset_version=opset,
                          dynamo=False)
    out.with_name(out.stem + ".preprocess.json").write_text(json.dumps(preprocess, indent=1))


def check(out: Path, tower, size: int) -> float:
    """Largest difference between torch and onnxruntime on random pixels (a sanity check)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    pixels = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = tower(torch.from_numpy(pixels)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
    return float(np.abs(expected - got).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", type=Path, help="local Hugging Face CLIP/SigLIP folder")
    source.add_argument("--open-clip", help="open_clip model name, e.g. ViT-B-32 (with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, help="local open_clip checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    if args.open_clip and not args.checkpoint:
        parser.error("--open-clip needs --checkpoint FILE (weights are never downloaded)")
    needed = ["torch", "transformers" if args.hf_dir else "open_clip"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:  # an export-time tool: the toolkit itself never needs these
        parser.error(f"exporting needs {' and '.join(missing)}: pip install torch "
                     f"{'transformers' if args.hf_dir else 'open_clip_torch'} (then run this again)")
    if args.hf_dir:
        tower, preprocess, size = hf_tower(args.hf_dir)
    else:
        tower, preprocess, size = open_clip_tower(args.open_clip, args.checkpoint)
    export(tower, preprocess, size, args.out, args.opset)
    print(f"wrote {args.out} and its preprocessing sidecar; max |torch - onnxruntime| = "
          f"{check(args.out, tower, size):.2e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

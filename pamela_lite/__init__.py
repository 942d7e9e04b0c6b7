"""pamela_lite: predict how much one particular person will like an image.

Images become embeddings once (an ONNX encoder, ``pamela_lite.embed``); a personal scorer
(population head + implicit factor model + LightGBM residual head, ``pamela_lite.model``) is
fitted on ratings (``python -m pamela_lite.fit``) and exported to one ONNX file for devices.
"""

__version__ = "0.1.0"

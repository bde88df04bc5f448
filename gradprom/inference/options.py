"""Choices shared by the command line and the code behind it (kept free of heavy imports, so building the
`gradprom` parser does not load torch, MONAI or onnxruntime)."""

BLENDS = ("gaussian", "constant")  # MONAI sliding-window blend modes offered
FORMATS = ("onnx", "torchscript")  # export formats

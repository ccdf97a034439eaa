"""unicompress-onnx: the ONNX backend of unicompress (compresses an ONNX file directly).

Importing this package does not import onnx or onnxruntime; `backend.OnnxAdapter` is the entry point
(``unicompress.backends: onnx``). The modules that do the work import onnx at the top.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]

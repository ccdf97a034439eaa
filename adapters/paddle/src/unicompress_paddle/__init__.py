"""unicompress backend for PaddlePaddle (PaddleSlim, paddle.quantization, paddle2onnx).

Importing this package does not import Paddle: `backend.PaddleAdapter` is the entry point and loads
the framework modules on first use, after checking that TensorFlow was not imported first
(see `compat.check_import_order`).
"""
__version__ = "0.1.0"

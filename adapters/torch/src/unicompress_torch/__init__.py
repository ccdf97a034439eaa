"""unicompress-torch: the PyTorch backend of unicompress.

Importing this package does not import torch; `backend.TorchAdapter` is the entry point
(``unicompress.backends: torch``). Framework modules (layers, pruning, ...) import torch at the top.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]

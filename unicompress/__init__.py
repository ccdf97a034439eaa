"""unicompress: write Transformer compression once, run it on PyTorch, TensorFlow or PaddlePaddle.

Importing this package never imports a framework; backends load on first use.

Example::

    import unicompress as uc
    recipe = uc.load_recipe("examples/int8_static.yaml")
    result = uc.compress(model, recipe, data=task_data)
    print(result.report.to_markdown())
"""
from .errors import (BackendNotFoundError, CapabilityError, MissingFrameworkError, ModelNotSupportedError,
                     SpecValidationError, StageError, UnicompressError)
from .recipe_io import load_recipe, load_stage, recipe_schema, save_recipe
from .specs import (DistillationSpec, FineTuneSpec, LayerSelector, LowRankSpec, PruningSpec, QuantizationSpec,
                    Recipe)

__version__ = "0.1.0"

_LAZY = {"compress": "api", "prune": "api", "quantize": "api", "distill": "api", "factorize": "api",
         "export_onnx": "api", "save_weights": "api", "load_model": "api", "CompressionResult": "api",
         "get_backend": "backend", "available_backends": "backend",
         "register": "backend", "TaskData": "backend"}


def __getattr__(name: str):
    # api/backend pull numpy; keep `import unicompress` as light as the specs
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'unicompress' has no attribute {name!r}")


__all__ = ["BackendNotFoundError", "CapabilityError", "MissingFrameworkError", "ModelNotSupportedError",
           "SpecValidationError", "StageError", "UnicompressError", "load_recipe", "load_stage", "recipe_schema",
           "save_recipe", "DistillationSpec", "FineTuneSpec", "LayerSelector", "LowRankSpec", "PruningSpec",
           "QuantizationSpec", "Recipe", "__version__", *_LAZY]

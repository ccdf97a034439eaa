"""Runtimes as deployment targets: load a model file in ONNX Runtime, OpenVINO (or an adapter's native
runtime), time every (file, runtime) pair in one run as ratios to a reference, compare their outputs, and
pick the fastest pair that keeps the outputs within a tolerance, saying why.

Example::

    from unicompress.deploy import compare_runtimes
    table = compare_runtimes(["fp32.onnx", "int8.onnx"], "onnxruntime,openvino", batch=32, threads=2)
    print(table.to_markdown())
    print(table.choose(0.99))

No runtime is imported until a file is loaded (`runtimes.Runtime.load`).
"""
from .choose import Choice, choose
from .compare import DeployTable, PairResult, compare_runtimes, deploy_report
from .runtimes import (InputSpec, MissingRuntimeError, Runtime, RuntimeNotFoundError, get_runtime, known_runtimes,
                       register_runtime, resolve_runtimes, unregister_runtime)

__all__ = ["Choice", "DeployTable", "InputSpec", "MissingRuntimeError", "PairResult", "Runtime",
           "RuntimeNotFoundError", "choose", "compare_runtimes", "deploy_report", "get_runtime", "known_runtimes",
           "register_runtime", "resolve_runtimes", "unregister_runtime"]

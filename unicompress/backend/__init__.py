"""The adapter protocol, capability tables and the backend registry."""
from .adapter import Adapter, StageContext, framework_imported
from .capabilities import Capabilities, Support, build_table
from .registry import (ENTRY_POINT_GROUP, available_backends, backend_for_model, get_backend, register,
                       resolve_backend, unregister)
from .types import (AttentionInfo, FFNInfo, Inputs, LayerInfo, LayerStats, QuantizedTensor, TaskData,
                    TransformerStructure)

__all__ = ["Adapter", "StageContext", "framework_imported", "Capabilities", "Support", "build_table",
           "ENTRY_POINT_GROUP", "available_backends", "backend_for_model", "get_backend", "register",
           "resolve_backend", "unregister", "AttentionInfo", "FFNInfo", "Inputs", "LayerInfo", "LayerStats",
           "QuantizedTensor", "TaskData", "TransformerStructure"]

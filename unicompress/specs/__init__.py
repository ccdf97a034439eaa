"""Framework-neutral, typed, frozen specs. Load them from YAML/JSON with `unicompress.recipe_io`."""
from .base import SPEC_VERSION, SpecModel
from .distillation import DistillationSpec, DistillKind, FeatureLoss, StudentSpec
from .finetune import FineTuneSpec
from .lowrank import LowRankSpec
from .pruning import Criterion, Granularity, Norm, PruningSchedule, PruningSpec, ScheduleKind, Scope
from .quantization import (CalibrationMethod, CalibrationSpec, LayerOverride, Mapping, QuantGranularity,
                           QuantizationSpec, QuantMode, Scheme)
from .recipe import STAGE_TYPES, DataSource, DeploySpec, ExportFormat, ExportSpec, ModelSource, Recipe, Stage
from .selector import DEFAULT_ROLES, LayerRole, LayerSelector
from .structure import AttentionDeclaration, FFNDeclaration, StructureDeclaration
from .training import DistributedStrategy, Optimizer, TrainingSpec

__all__ = [
    "SPEC_VERSION", "SpecModel", "DistillationSpec", "DistillKind", "FeatureLoss", "StudentSpec", "FineTuneSpec",
    "LowRankSpec", "Criterion", "Granularity", "Norm", "PruningSchedule", "PruningSpec", "ScheduleKind", "Scope",
    "CalibrationMethod", "CalibrationSpec", "LayerOverride", "Mapping", "QuantGranularity", "QuantizationSpec",
    "QuantMode", "Scheme", "STAGE_TYPES", "DataSource", "DeploySpec", "ExportFormat", "ExportSpec", "ModelSource", "Recipe",
    "Stage", "DEFAULT_ROLES", "LayerRole", "LayerSelector", "DistributedStrategy", "Optimizer", "TrainingSpec",
    "AttentionDeclaration", "FFNDeclaration", "StructureDeclaration",
]

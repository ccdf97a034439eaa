"""Transformer structure, decided once: the role vocabulary, block numbering and declared structure.

Adapters discover a model's structure from its layer types and config (each framework its own walk);
everything that turns a structure into roles, blocks and plans lives here, the same for every backend.
"""
from ..specs.structure import StructureDeclaration
from .declared import declared_structure
from .roles import TRANSFORMER_ROLES, assign_roles, block_from_name, role_from_name, roles_of

__all__ = ["StructureDeclaration", "declared_structure", "TRANSFORMER_ROLES", "assign_roles", "roles_of",
           "role_from_name", "block_from_name"]

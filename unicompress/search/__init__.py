"""Automatic compression to a budget (#15): per-layer sensitivity, a search strategy (greedy from sensitivity,
or Optuna's multi-objective samplers), and the best plan within a metric tolerance written as an ordinary recipe.

Nothing here imports a framework or Optuna on import; `unicompress search` is the command.
"""
from .evaluate import Evaluator, Trial, objective_of, validation_split
from .pareto import dominates, pareto_front
from .plan import Plan, label, plan_recipe, plan_stages
from .runner import SearchResult, load_search, search
from .sensitivity import SensitivityRow, compute_sensitivity, searched_layers
from .strategies import Budget, GreedyStrategy, OptunaStrategy, SearchStrategy

__all__ = ["Evaluator", "Trial", "objective_of", "validation_split", "dominates", "pareto_front", "Plan", "label",
           "plan_recipe", "plan_stages", "SearchResult", "load_search", "search", "SensitivityRow",
           "compute_sensitivity", "searched_layers", "Budget", "GreedyStrategy", "OptunaStrategy", "SearchStrategy"]

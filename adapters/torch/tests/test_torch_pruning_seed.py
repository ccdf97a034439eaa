"""L0 pruning draws its noise from generators seeded by ``spec.training.seed``, never from the global torch RNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from unicompress_torch_testutil import encoder_model, task_data, tiny

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.specs import PruningSpec, TrainingSpec
from unicompress_torch.pruning import GradualPruner, HardConcreteGate
from unicompress_torch.pruning_l0 import gate_seed
from unicompress_torch.training import to_torch_inputs

A = get_backend("torch")
STEPS = 6


def _batches():
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(4, 5, 16)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(STEPS)]


def _l0_in_own_loop(granularity: str, spec_seed: int, global_seed: int) -> tuple[dict, np.ndarray]:
    """A hand-written L0 loop on a dropout-free encoder; returns (nonzero masks, log-alphas before finish).

    Asserts that the loop leaves the global RNG exactly where it was."""
    model = encoder_model(heads=4).train()
    spec = PruningSpec(granularity=granularity, sparsity=0.5, criterion="l0_regularized", regularization=1.0,
                       remove_pruned=False, training=TrainingSpec(steps=STEPS, learning_rate=0.1, seed=spec_seed))
    torch.manual_seed(global_seed)  # a different global stream per run: the gates must not read it
    before = torch.get_rng_state()
    pruner = GradualPruner(model, spec)
    params = {id(p): p for p in [*model.parameters(), *pruner.extra_params()]}  # gates are submodules too
    opt = torch.optim.SGD(list(params.values()), lr=0.1)
    loss_fn = pruner.loss_fn()
    for step, (x, y) in enumerate(_batches()):
        pruner.step(step)
        opt.zero_grad()
        loss_fn(model, to_torch_inputs(x), torch.as_tensor(y)).backward()
        opt.step()
    assert torch.equal(torch.get_rng_state(), before)  # no draw from the process-global RNG
    alphas = np.concatenate([g.log_alpha.detach().numpy().reshape(-1) for g in pruner.gates.values()])
    pruner.finish()
    names = sorted({t.name for t in pruner.targets.all_tensors()})
    return {n: A.weights(model, [n])[n] != 0 for n in names}, alphas


@pytest.mark.parametrize("granularity", ["unstructured", "neuron", "head"])
def test_l0_masks_follow_the_spec_seed_not_the_global_rng(granularity):
    masks_a, alphas_a = _l0_in_own_loop(granularity, spec_seed=7, global_seed=1)
    masks_b, alphas_b = _l0_in_own_loop(granularity, spec_seed=7, global_seed=2)
    np.testing.assert_array_equal(alphas_a, alphas_b)  # the same noise: bit-identical gates
    assert masks_a.keys() == masks_b.keys() and len(masks_a) >= 2
    for name in masks_a:
        np.testing.assert_array_equal(masks_a[name], masks_b[name])
    sparsity = np.mean(np.concatenate([~m.reshape(-1) for m in masks_a.values()]))
    assert 0.3 < sparsity < 0.6  # the masks pruned (exact targets are checked in test_torch_pruning)
    _, alphas_c = _l0_in_own_loop(granularity, spec_seed=8, global_seed=1)
    assert np.abs(alphas_c - alphas_a).max() > 1e-6  # the spec's seed is what drives the noise


def test_gate_draws_come_from_its_own_seeded_generator():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    gates = [HardConcreteGate((64,), lambda z: z, seed=s) for s in (5, 5, 6)]
    draws = []
    for g in gates:
        g.train()
        first = g.gate().detach().clone()
        g.resample()
        draws.append((first, g.gate().detach().clone()))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])  # same seed, same z
    assert not torch.equal(draws[0][0], draws[0][1])  # each resample draws new noise
    assert not torch.equal(draws[0][0], draws[2][0])  # another seed, other noise
    assert ((draws[0][0] >= 0) & (draws[0][0] <= 1)).all() and float(draws[0][0].std()) > 0
    # gates of one stage get distinct streams; a stage seed never reuses another's
    assert len({gate_seed(s, i) for s in range(4) for i in range(4)}) == 16


def test_l0_stage_leaves_the_global_rng_state_unchanged():
    model, _, _ = tiny()
    spec = PruningSpec(granularity="neuron", sparsity=0.5, criterion="l0_regularized", regularization=1.0,
                       remove_pruned=False, schedule={"kind": "polynomial", "end_step": 4, "frequency": 2},
                       training=TrainingSpec(steps=4, learning_rate=0.05, seed=3))
    results = []
    for global_seed in (11, 12):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        pruned = A.apply(A.copy(model), spec, task_data(batches=2), StageContext())
        assert torch.equal(torch.get_rng_state(), before)  # the stage (its train loop included) restores it
        results.append(A.weights(pruned))
    for name, w in results[0].items():
        np.testing.assert_array_equal(w, results[1][name])
    ffn_in = A.structure(model).ffn[0].ffn_in
    assert (results[0][ffn_in] != 0).any(axis=1).mean() == 0.5

"""The checks: each judges one property of one case's outcome against the numpy reference.

Every check is a function (adapter, outcome) -> CheckResult, registered in CHECKS by name; the pure
numpy helpers below them (`nm_violations`, `whole_rows`, ...) are what the suite's self-tests pin down.
A check that does not apply to a case (e.g. a mask reference for a training-time criterion) returns
passed=None, which the templates turn into a skip.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np

from .. import reference as ref
from ..reference.quantization import qrange
from ..specs import DistillationSpec, LowRankSpec, PruningSpec, QuantizationSpec
from ..specs.pruning import Criterion, Granularity, ScheduleKind, Scope
from ..planner import layer_settings
from ..specs.quantization import Mapping, QuantGranularity, QuantMode, Scheme
from .cases import eval_inputs
from .runner import CheckResult, Outcome

Check = Callable[[Any, Outcome], CheckResult]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn
    return register


def run_check(name: str, adapter: Any, outcome: Outcome) -> CheckResult:
    """Run a registered check; a stage that raised fails every check, a check that raises fails itself."""
    if name not in CHECKS:
        return CheckResult(name, False, f"unknown check {name!r}; known: {', '.join(sorted(CHECKS))}")
    if outcome.error is not None and name not in ("applies", "refused"):
        first = outcome.error.strip().splitlines()[-1]
        return CheckResult(name, False, f"stage failed, nothing to check: {first}")
    try:
        return CHECKS[name](adapter, outcome)
    except Exception as exc:  # a check crashing on a backend's odd output is that backend's failure
        import traceback
        return CheckResult(name, False, f"check raised {type(exc).__name__}: {exc}\n"
                           + "".join(traceback.format_tb(exc.__traceback__)[-3:]))


def _result(name: str, failures: list[str], numbers: Optional[dict] = None, ok: str = "") -> CheckResult:
    shown = failures[:6] + ([f"... and {len(failures) - 6} more"] if len(failures) > 6 else [])
    return CheckResult(name, not failures, "; ".join(shown) if failures else ok, numbers or {})


def _na(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, why)


def selected_names(outcome: Outcome, spec: Any) -> list[str]:
    return [layer.name for layer in spec.selector.select(outcome.layers_before)]


def _after(adapter: Any, outcome: Outcome) -> dict[str, np.ndarray]:
    if "weights_after" not in outcome.cache:
        outcome.cache["weights_after"] = {k: np.asarray(v) for k, v in adapter.weights(outcome.model).items()}
    return outcome.cache["weights_after"]


# ---- pure helpers (tested on their own) -------------------------------------------------------------------------

def nm_violations(weight: np.ndarray, n: int, m: int) -> int:
    """Groups of M consecutive weights along the input (last) axis with fewer than N zeros."""
    groups = np.asarray(weight).reshape(-1, m)
    return int(((groups == 0).sum(axis=1) < n).sum())


def partial_blocks(weight: np.ndarray, block_shape: tuple[int, int]) -> int:
    """Blocks that are neither all zero nor free of zeros (a pruned block must be whole)."""
    br, bc = block_shape
    rows, cols = weight.shape
    bad = 0
    for r in range(0, rows, br):
        for c in range(0, cols, bc):
            zeros = np.asarray(weight[r:r + br, c:c + bc]) == 0
            bad += int(zeros.any() and not zeros.all())
    return bad


def whole_rows(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """(keep-vector over rows, number of rows that are partly zero)."""
    zeros = np.asarray(weight) == 0
    return ~zeros.all(axis=1), int((zeros.any(axis=1) & ~zeros.all(axis=1)).sum())


def match_rows(after: np.ndarray, before: np.ndarray, atol: float = 1e-6) -> Optional[np.ndarray]:
    """Keep-vector over the rows of `before` that survive (in order) as the rows of `after`, or None."""
    keep = np.zeros(before.shape[0], dtype=bool)
    j = 0
    for i in range(before.shape[0]):
        if j < after.shape[0] and np.allclose(after[j], before[i], atol=atol):
            keep[i] = True
            j += 1
    return keep if j == after.shape[0] else None


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions where two boolean masks differ."""
    return 1.0 - ref.pruning.mask_agreement(a, b)


def schedule_errors(history: list[tuple[int, float]], final: float, initial: float, begin: int, end: int,
                    power: float) -> list[tuple[int, float, float]]:
    """(step, logged, nearest expected) for each logged point; one step of slack either side is allowed
    (frameworks count optimizer steps from 0 or from 1)."""
    out = []
    for step, value in history:
        candidates = [ref.polynomial_sparsity(s, final, initial, begin, end, power) for s in (step - 1, step, step + 1)]
        best = min(candidates, key=lambda e: abs(e - value))
        out.append((step, value, best))
    return out


def loss_fell(points: list[tuple[int, float]], min_drop: float) -> tuple[bool, float, float]:
    """(fell, mean of the first quarter, mean of the last quarter) of a logged loss curve."""
    values = [v for _, v in sorted(points)]
    k = max(1, len(values) // 4)
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return (len(values) >= 2 and math.isfinite(last) and last < first * (1 - min_drop)), first, last


def kl_divergence(teacher_logits: np.ndarray, student_logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean KL(softmax(t/T) || softmax(s/T)) over the batch."""
    def log_softmax(x):
        x = np.asarray(x, np.float64) / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lt, ls = log_softmax(teacher_logits), log_softmax(student_logits)
    return float((np.exp(lt) * (lt - ls)).sum(-1).mean())


def effective_quant(spec: QuantizationSpec, name: str) -> Optional[dict]:
    """bits/symmetric/per_channel for one layer under the core's one override rule
    (`unicompress.planner.layer_settings`), None when skipped."""
    settings = layer_settings(spec, name)
    if settings["skip"]:
        return None
    return {"bits": settings["bits"], "symmetric": settings["scheme"] is Scheme.symmetric,
            "per_channel": settings["granularity"] is QuantGranularity.per_channel}


def numerical_rank(w: np.ndarray, rtol: float = 1e-5) -> int:
    s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


# ---- generic checks ------------------------------------------------------------------------------------------------

@check("applies")
def check_applies(adapter, o: Outcome) -> CheckResult:
    """The stage ran without raising and returned a model of the backend."""
    if o.error is not None:
        return CheckResult("applies", False, f"the stage raised:\n{o.error}")
    if o.model is None or not adapter.is_model(o.model):
        return CheckResult("applies", False, f"apply returned {type(o.model).__name__}, not a {adapter.name} model")
    now = adapter.weights(o.original)  # the stage worked on adapter.copy(original): the original must not move
    touched = [n for n, w in o.weights_before.items() if n not in now or not np.array_equal(now[n], w)]
    if touched:
        return CheckResult("applies", False, f"the stage changed the model it was copied from (adapter.copy shares "
                           f"state?): {touched[:3]}")
    return CheckResult("applies", True, f"{o.seconds:.2f} s", {"seconds": o.seconds})


@check("runs_finite")
def check_runs_finite(adapter, o: Outcome) -> CheckResult:
    """The compressed model runs on held-out inputs and gives finite logits of the right shape."""
    x = eval_inputs(o.case.model)
    y = np.asarray(adapter.run(o.model, x))
    want = np.asarray(adapter.run(o.original, x)).shape
    fails = []
    if y.shape != want:
        fails.append(f"logits shape {y.shape}, expected {want}")
    if not np.all(np.isfinite(y)):
        fails.append(f"{int((~np.isfinite(y)).sum())} non-finite logits")
    return _result("runs_finite", fails, {"max_abs_logit": float(np.nanmax(np.abs(y))) if y.size else 0.0})


@check("loss_falls")
def check_loss_falls(adapter, o: Outcome) -> CheckResult:
    """ctx.history['loss'] falls: the last quarter's mean is below the first quarter's."""
    points = o.history.get("loss", [])
    if len(points) < 4:
        return _result("loss_falls", [f"ctx.history['loss'] has {len(points)} points; log the loss every step"])
    fell, first, last = loss_fell(points, o.case.tolerance.loss_drop)
    msg = f"loss {first:.4f} -> {last:.4f} over {len(points)} points"
    return _result("loss_falls", [] if fell else [f"{msg}: did not fall by {o.case.tolerance.loss_drop:.0%}"],
                   {"loss_first": first, "loss_last": last}, msg)


@check("first_loss")
def check_first_loss(adapter, o: Outcome) -> CheckResult:
    """The loss logged at the first training step equals the core's meaning of the spec
    (`unicompress.reference.distillation.first_step_loss`, float64 numpy on the same zoo weights and the same first
    batch, padding included): one number that every term of the loss, its masking and its averaging feed."""
    from .. import zoo
    from ..reference.distillation import first_step_loss
    from ..zoo.reference import bert_features
    from .cases import task_data
    from .runner import teacher_weights

    if o.case.model not in ("tiny-bert", "minilm-l6"):  # the reference forward is the zoo BERT's
        return _na("first_loss", f"no numpy reference forward for {o.case.model}")
    points = o.history.get("loss", [])
    if not points:
        return _result("first_loss", ["ctx.history['loss'] is empty; log the loss every step"])
    cfg = zoo.config_for(o.case.model)
    inputs, labels = next(iter(task_data(o.case.model, padded=o.case.padded).endless_train(
        o.case.spec.training.batch_size)))
    student = bert_features(cfg, zoo.weights_for(o.case.model, cfg, seed=o.case.student_seed or 0), inputs)
    teacher = bert_features(cfg, teacher_weights(o.case.model), inputs)
    want = first_step_loss(o.case.spec, teacher, student, inputs["attention_mask"], labels)
    got = float(points[0][1])
    tol = o.case.tolerance.first_loss_rtol * max(abs(want["total"]), 1e-3)
    terms = ", ".join(f"{k} {v:.6f}" for k, v in want.items())
    msg = f"first loss {got:.6f}, the core's {want['total']:.6f} ({terms})"
    return _result("first_loss", [] if abs(got - want["total"]) <= tol else [f"{msg}: off by more than "
                                                                             f"{o.case.tolerance.first_loss_rtol:.0e}"],
                   {"first_loss": got, "reference": want["total"]}, msg)


@check("refused")
def check_refused(adapter, o: Outcome) -> CheckResult:
    """The stage was refused before work, exactly as the core planner refuses it: the same error type and
    message as `unicompress.planner.plan_stage` on the same model (so every backend refuses alike), naming
    the case's field, and the model handed to the stage is bit-for-bit untouched."""
    from ..planner import plan_stage

    want = o.case.refusal
    try:
        plan_stage(adapter, adapter.copy(o.original), o.case.spec, len(o.case.pre))
        core = None
    except Exception as exc:  # noqa: BLE001 - the planner's refusal is what the stage must match
        core = exc
    if core is None:
        return _result("refused", [f"the core planner accepts this spec on {o.case.model}: the case expects it to "
                                   f"refuse {want}"])
    core_msg = f"{type(core).__name__}: {core}"
    if o.exception is None:
        ran = _ran_anyway(adapter, o)
        return _result("refused", [f"the stage ran ({ran}) although the core planner refuses it: {core_msg}"])
    got_msg = f"{type(o.exception).__name__}: {o.exception}"
    fails = []
    if got_msg != core_msg:
        fails.append(f"refused differently from the core planner: got {got_msg!r}, the planner says {core_msg!r}")
    if want not in str(core):
        fails.append(f"the planner's refusal does not name {want}: {core_msg}")
    if o.staged is not None:
        now = adapter.weights(o.staged)
        touched = [n for n, w in o.weights_before.items() if n not in now or not np.array_equal(now[n], w)]
        if touched:
            fails.append(f"the refused stage changed the model it was given: {touched[:3]}")
    return _result("refused", fails, {"seconds": o.seconds},
                   f"refused before work like the core planner: {' | '.join(core_msg.splitlines()[:2])[:240]}")


def _ran_anyway(adapter, o: Outcome) -> str:
    """What a stage that should have been refused did: zeros and parameters of the selected layers."""
    if o.model is None:
        return "returned nothing"
    rows = {r.name: r for r in adapter.describe(o.model)}
    names = [n for n in selected_names(o, o.case.spec) if n in rows]
    before = sum(int(np.prod(la.shape)) for la in o.layers_before if la.name in names)
    params = sum(rows[n].params for n in names)
    zero = sum(rows[n].params - rows[n].nonzero for n in names)
    if not params:
        return "no selected layer found"
    return f"{len(names)} selected layers now {zero / params:.1%} zero, {before} -> {params} parameters"


# ---- pruning ---------------------------------------------------------------------------------------------------------

def _pruning_units(adapter, o: Outcome) -> dict:
    """Per unit group (a layer, an attention block or an FFN pair): observed keep, reference keep, sizes."""
    if "units" not in o.cache:  # shared by the sparsity, pattern and reference_mask checks
        o.cache["units"] = _compute_pruning_units(adapter, o)
    return o.cache["units"]


def _compute_pruning_units(adapter, o: Outcome) -> dict:
    spec: PruningSpec = o.case.spec
    g = spec.granularity
    before, after = o.weights_before, _after(adapter, o)
    names = selected_names(o, spec)
    trained = spec.criterion is not Criterion.magnitude or spec.schedule.kind is ScheduleKind.polynomial
    groups, problems = {}, []
    if g in (Granularity.unstructured, Granularity.n_m, Granularity.block):
        expected = {}
        if not trained:
            if g is Granularity.unstructured and spec.scope is Scope.global_:
                expected = ref.global_magnitude_masks({n: before[n] for n in names}, spec.target_sparsity)
            for n in names:
                if n in expected:
                    continue
                if g is Granularity.unstructured:
                    expected[n] = ref.magnitude_mask(before[n], spec.target_sparsity)
                elif g is Granularity.n_m:
                    expected[n] = ref.nm_mask(before[n], spec.n, spec.m)
                else:
                    expected[n] = ref.block_mask(before[n], spec.block_shape, spec.target_sparsity, spec.norm.value)
        for n in names:
            if n not in after or after[n].shape != before[n].shape:
                problems.append(f"{n}: weight {getattr(after.get(n), 'shape', None)} after pruning, "
                                f"expected {before[n].shape}")
                continue
            groups[n] = {"keep": after[n] != 0, "expected": expected.get(n), "weight": after[n]}
    elif g is Granularity.neuron:
        structure = o.structure_before
        ffn_out_of = {f.ffn_in: f.ffn_out for f in (structure.ffn if structure else ())}
        for n in names:
            w0, w1 = before[n], after.get(n)
            exp = None if trained else ref.neuron_mask(w0, spec.target_sparsity, spec.norm.value)
            if w1 is None:
                problems.append(f"{n}: missing after pruning")
                continue
            if w1.shape == w0.shape:
                keep, partial = whole_rows(w1)
                if partial:
                    problems.append(f"{n}: {partial} rows partly zero (neurons must be pruned whole)")
                removed = False
            elif w1.shape[1] == w0.shape[1] and w1.shape[0] < w0.shape[0]:
                keep = match_rows(w1, w0) if not trained else np.r_[np.ones(w1.shape[0], bool),
                                                                        np.zeros(w0.shape[0] - w1.shape[0], bool)]
                removed = True
                if keep is None:
                    problems.append(f"{n}: the remaining rows are not rows of the original weight")
                    continue
                partner = ffn_out_of.get(n)
                if partner is not None and partner in after and after[partner].shape[1] != w1.shape[0]:
                    problems.append(f"{partner}: {after[partner].shape[1]} input columns but {n} keeps "
                                    f"{w1.shape[0]} neurons")
            else:
                problems.append(f"{n}: shape {w1.shape} after neuron pruning of {w0.shape}")
                continue
            groups[n] = {"keep": keep, "expected": exp, "removed": removed}
    elif g is Granularity.head:
        structure = o.structure_before
        for att in (structure.attention if structure else ()):
            if att.query not in names:
                continue
            q0, k0, v0, o0 = (before[x] for x in (att.query, att.key, att.value, att.output))
            exp = None if trained else ref.head_mask(q0, k0, v0, o0, att.num_heads, spec.target_sparsity,
                                                     spec.norm.value)
            d = att.head_dim
            q1, k1, v1, o1 = (after.get(x) for x in (att.query, att.key, att.value, att.output))
            if any(t is None for t in (q1, k1, v1, o1)):
                problems.append(f"block {att.block}: attention weights missing after head pruning")
                continue
            if q1.shape == q0.shape:
                zero_rows = [(t == 0).reshape(att.num_heads, d, -1) for t in (q1, k1, v1)]
                zero_cols = (o1 == 0).T.reshape(att.num_heads, d, -1)
                parts = zero_rows + [zero_cols]
                all_zero = np.all([p.all(axis=(1, 2)) for p in parts], axis=0)
                any_zero = np.any([p.any(axis=(1, 2)) for p in parts], axis=0)
                if (any_zero & ~all_zero).any():
                    problems.append(f"block {att.block}: heads {np.where(any_zero & ~all_zero)[0].tolist()} "
                                    "are partly zero (heads must be pruned whole, Q/K/V rows and O columns)")
                keep, removed = ~all_zero, False
            else:
                kept = q1.shape[0] // d
                if q1.shape[0] % d or k1.shape != q1.shape or v1.shape != q1.shape or o1.shape[1] != q1.shape[0]:
                    problems.append(f"block {att.block}: shapes Q{q1.shape} K{k1.shape} V{v1.shape} O{o1.shape} "
                                    f"are not whole heads of {d}")
                    continue
                if trained:
                    keep = np.r_[np.ones(kept, bool), np.zeros(att.num_heads - kept, bool)]
                else:
                    keep = match_rows(q1.reshape(kept, -1), q0.reshape(att.num_heads, -1))
                    if keep is None:
                        problems.append(f"block {att.block}: the remaining Q rows are not whole heads of the original")
                        continue
                removed = True
            groups[f"{att.query.rsplit('.', 2)[0]}"] = {"keep": keep, "expected": exp, "removed": removed}
    return {"groups": groups, "problems": problems, "trained": trained}


@check("sparsity")
def check_sparsity(adapter, o: Outcome) -> CheckResult:
    """Achieved sparsity (of weights, or of units for heads/neurons) equals the target per layer and overall."""
    spec: PruningSpec = o.case.spec
    tol = o.case.tolerance.sparsity
    units = _pruning_units(adapter, o)
    fails = list(units["problems"])
    target = spec.target_sparsity
    pruned = total = 0
    for name, grp in units["groups"].items():
        keep = np.asarray(grp["keep"])
        s = 1.0 - keep.sum() / keep.size
        pruned += keep.size - keep.sum()
        total += keep.size
        if spec.scope is Scope.per_layer and abs(s - target) > tol + 0.5 / keep.size:
            fails.append(f"{name}: sparsity {s:.4f}, target {target:.4f} (tolerance {tol})")
    overall = pruned / total if total else 0.0
    if not units["groups"]:
        fails.append("no selected layer was found after pruning")
    elif abs(overall - target) > tol:
        fails.append(f"overall sparsity {overall:.4f}, target {target:.4f} (tolerance {tol})")
    return _result("sparsity", fails, {"overall_sparsity": overall, "target": target},
                   f"overall {overall:.4f} (target {target:.4f})")


@check("pattern")
def check_pattern(adapter, o: Outcome) -> CheckResult:
    """The structure holds: N:M groups, whole blocks, whole heads and neurons (shapes consistent when removed)."""
    spec: PruningSpec = o.case.spec
    g = spec.granularity
    units = _pruning_units(adapter, o)
    fails = list(units["problems"])
    if g is Granularity.unstructured:
        return _result("pattern", fails, ok="unstructured: no pattern beyond the sparsity") if fails else \
            _na("pattern", "unstructured pruning has no pattern")
    bad = 0
    for name, grp in units["groups"].items():
        if g is Granularity.n_m:
            v = nm_violations(grp["weight"], spec.n, spec.m)
            if v:
                fails.append(f"{name}: {v} groups of {spec.m} with fewer than {spec.n} zeros")
            bad += v
        elif g is Granularity.block:
            v = partial_blocks(grp["weight"], spec.block_shape)
            if v:
                fails.append(f"{name}: {v} blocks of {spec.block_shape} are partly zero")
            bad += v
    return _result("pattern", fails, {"violations": bad}, f"{g.value} pattern holds on {len(units['groups'])} groups")


@check("reference_mask")
def check_reference_mask(adapter, o: Outcome) -> CheckResult:
    """The kept set equals the numpy reference's on the same weights (ties aside)."""
    units = _pruning_units(adapter, o)
    if units["trained"]:
        return _na("reference_mask", "training-time criterion or schedule: the mask depends on training")
    tol = o.case.tolerance.mask_disagreement
    fails = list(units["problems"])
    worst = 0.0
    for name, grp in units["groups"].items():
        if grp["expected"] is None:
            continue
        d = disagreement(grp["keep"], grp["expected"])
        worst = max(worst, d)
        if d > tol:
            fails.append(f"{name}: mask differs from the reference at {d:.2%} of positions (tolerance {tol:.2%})")
    return _result("reference_mask", fails, {"max_disagreement": worst},
                   f"agrees with the reference on {len(units['groups'])} groups")


@check("schedule")
def check_schedule(adapter, o: Outcome) -> CheckResult:
    """ctx.history['sparsity'] follows the polynomial schedule at every logged mask update."""
    spec: PruningSpec = o.case.spec
    sch = spec.schedule
    points = o.history.get("sparsity", [])
    if len(points) < 3:
        return _result("schedule", [f"ctx.history['sparsity'] has {len(points)} points; log the achieved "
                                    "sparsity at every mask update"])
    tol = o.case.tolerance.schedule
    errs = schedule_errors(points, spec.target_sparsity, sch.initial_sparsity, sch.begin_step, sch.end_step,
                           sch.power)
    fails = [f"step {s}: sparsity {v:.4f}, schedule says {e:.4f}" for s, v, e in errs if abs(v - e) > tol]
    if sch.end_step not in {s for s, _ in points}:  # the reference's rule: the masks are updated at end_step
        fails.append(f"no mask update logged at end_step {sch.end_step} (last at {max(s for s, _ in points)}): "
                     "the rule is every frequency steps from begin_step and at end_step (mask_update_due)")
    final = sorted(points)[-1][1]
    if abs(final - spec.target_sparsity) > tol:
        fails.append(f"final logged sparsity {final:.4f}, target {spec.target_sparsity:.4f}")
    worst = max(abs(v - e) for _, v, e in errs)
    return _result("schedule", fails, {"max_schedule_error": worst, "points": len(points)},
                   f"{len(points)} points within {worst:.4f} of the polynomial")


# ---- quantization -------------------------------------------------------------------------------------------------

def _quantized(adapter, o: Outcome) -> dict:
    if "quantized" not in o.cache:
        o.cache["quantized"] = dict(adapter.quantized_weights(o.model))
    return o.cache["quantized"]


def _expected_quant_layers(o: Outcome) -> dict[str, dict]:
    spec: QuantizationSpec = o.case.spec
    out = {}
    for n in selected_names(o, spec):
        cfg = effective_quant(spec, n)
        if cfg is not None:
            out[n] = cfg
    return out


@check("quantized_layers")
def check_quantized_layers(adapter, o: Outcome) -> CheckResult:
    """Exactly the selected, non-skipped layers are quantized, in the neutral [out, in] layout."""
    qw = _quantized(adapter, o)
    want = _expected_quant_layers(o)
    fails = []
    missing = sorted(set(want) - set(qw))
    extra = sorted(set(qw) - set(want))
    if missing:
        fails.append(f"not quantized: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if extra:
        fails.append(f"quantized but not selected (or skipped by an override): {extra[:4]}")
    for n in sorted(set(want) & set(qw)):
        if tuple(np.shape(qw[n].q)) != tuple(o.weights_before[n].shape):
            fails.append(f"{n}: q has shape {np.shape(qw[n].q)}, the weight is {o.weights_before[n].shape} [out, in]")
    return _result("quantized_layers", fails, {"quantized": len(qw), "expected": len(want)},
                   f"{len(qw)} layers quantized")


def _channels(q: np.ndarray, per_channel: bool) -> list[np.ndarray]:
    q = np.asarray(q)
    return [q[i] for i in range(q.shape[0])] if per_channel else [q.reshape(-1)]


@check("layer_settings")
def check_layer_settings(adapter, o: Outcome) -> CheckResult:
    """Each selected layer ends with the setting of the core's one override rule (`planner.layer_settings`):
    ``describe()`` reports its planned bits (32: an override kept it float), and its quantized tensor has
    the planned granularity (per-channel: one scale per output row) and scheme (symmetric: zero-points 0)."""
    spec: QuantizationSpec = o.case.spec
    described = {r.name: r for r in adapter.describe(o.model)}
    qw = _quantized(adapter, o)
    fails, agree, names = [], 0, selected_names(o, spec)
    for n in names:
        s = layer_settings(spec, n)
        bits = 32 if s["skip"] else s["bits"]
        rule = "float (an override skips it)" if s["skip"] else \
            f"{s['bits']} bits {s['granularity'].value} {s['scheme'].value}"
        row = described.get(n)
        bad = []
        if row is None:
            bad.append("missing from describe()")
        elif row.bits != bits:
            bad.append(f"describe() reports {row.bits} bits")
        t = qw.get(n)
        if s["skip"] and t is not None:
            bad.append("it is quantized")
        elif not s["skip"]:
            if t is None:
                bad.append("no quantized tensor")
            else:
                scales = int(np.size(t.scale))
                per_channel = s["granularity"] is QuantGranularity.per_channel
                if per_channel != (scales > 1):
                    bad.append(f"{scales} scale(s)")
                if s["scheme"] is Scheme.symmetric and np.any(np.asarray(t.zero_point) != 0):
                    bad.append("non-zero zero-points")
        if bad:
            fails.append(f"{n}: {', '.join(bad)}; the override rule gives {rule}")
        else:
            agree += 1
    return _result("layer_settings", fails, {"layers_as_planned": agree, "selected": len(names)},
                   f"{agree}/{len(names)} selected layers as the override rule plans")


@check("levels")
def check_levels(adapter, o: Outcome) -> CheckResult:
    """At most 2^bits levels per channel (per tensor when per-tensor), all inside the integer grid."""
    spec: QuantizationSpec = o.case.spec
    qw, want = _quantized(adapter, o), _expected_quant_layers(o)
    fails, worst = [], 0
    for n, cfg in want.items():
        t = qw.get(n)
        if t is None:
            continue
        bits = cfg["bits"]
        if t.bits != bits:
            fails.append(f"{n}: reports {t.bits} bits, the spec asks {bits}")
        if spec.mapping is Mapping.log:
            if t.sign is None:
                fails.append(f"{n}: log mapping without signs")
                continue
            codes = np.asarray(t.q) - np.reshape(t.zero_point, (-1,) + (1,) * (np.ndim(t.q) - 1)) \
                if np.ndim(t.zero_point) else np.asarray(t.q) - t.zero_point
            if codes.min() < 0 or codes.max() > 2 ** (bits - 1) - 1:
                fails.append(f"{n}: log codes in [{codes.min()}, {codes.max()}], allowed [0, {2 ** (bits - 1) - 1}]")
            values = np.asarray(t.sign, np.int64) * (np.asarray(codes) + 1)  # 0 = exact zero
        else:
            qmin, qmax = qrange(bits, cfg["symmetric"], spec.narrow_range)
            q = np.asarray(t.q)
            if q.min() < qmin or q.max() > qmax:
                fails.append(f"{n}: integers in [{q.min()}, {q.max()}], grid is [{qmin}, {qmax}]")
            values = q
        for row in _channels(values, cfg["per_channel"]):
            levels = len(np.unique(row))
            worst = max(worst, levels)
            if levels > 2 ** bits:
                fails.append(f"{n}: {levels} levels in a channel, at most {2 ** bits} for {bits} bits")
                break
    return _result("levels", fails, {"max_levels": worst}, f"at most {worst} levels per channel")


@check("qparams")
def check_qparams(adapter, o: Outcome) -> CheckResult:
    """Scale, zero-point and integers equal the reference's for the same weights (QAT: the grid is filled)."""
    spec: QuantizationSpec = o.case.spec
    tol = o.case.tolerance
    qw, want = _quantized(adapter, o), _expected_quant_layers(o)
    fails, worst_scale, worst_int = [], 0.0, 0.0
    for n, cfg in want.items():
        t = qw.get(n)
        if t is None:
            continue
        scale = np.asarray(t.scale, np.float64).reshape(-1)
        zp = np.asarray(t.zero_point).reshape(-1)
        rows = o.weights_before[n].shape[0]
        if cfg["per_channel"] and (t.axis != 0 or scale.size != rows):
            fails.append(f"{n}: per-channel needs axis 0 and {rows} scales; got axis {t.axis}, {scale.size} scales")
            continue
        if not cfg["per_channel"] and scale.size != 1:
            fails.append(f"{n}: per-tensor needs one scale, got {scale.size}")
            continue
        if spec.mapping is Mapping.log:
            r = ref.log_quantize(o.weights_before[n], cfg["bits"], spec.log_base, cfg["per_channel"])
            err = float(np.max(np.abs(scale - np.asarray(r.scale).reshape(-1)) / np.asarray(r.scale).reshape(-1)))
            worst_scale = max(worst_scale, err)
            if err > tol.scale_rtol:
                fails.append(f"{n}: log scale off by {err:.2e} relative (tolerance {tol.scale_rtol:g})")
            codes = np.asarray(t.q) - (zp.reshape((-1,) + (1,) * (np.ndim(t.q) - 1)) if zp.size > 1 else zp)
            mism = float(((codes != r.q) & (r.sign != 0)).mean())
            worst_int = max(worst_int, mism)
            if mism > tol.int_mismatch:
                fails.append(f"{n}: {mism:.2%} of log codes differ from the reference")
            continue
        qmin, qmax = qrange(cfg["bits"], cfg["symmetric"], spec.narrow_range)
        if spec.mode is QuantMode.qat:  # the weights trained: judge the grid, not a reference on old weights
            q = np.asarray(t.q)
            for i, row in enumerate(_channels(q, cfg["per_channel"])):
                top = np.abs(row).max() if cfg["symmetric"] else row.max()
                if top < qmax - 1:
                    fails.append(f"{n}: channel {i} reaches only {top} of {qmax}: the scale is too large")
                    break
            if cfg["symmetric"] and np.any(zp != 0):
                fails.append(f"{n}: symmetric scheme with non-zero zero-points")
            continue
        # weights use min-max ranges; a static spec's calibration method may clip them too (CalibrationSpec):
        # the reference closest to the backend's scales is the one it is judged against
        methods = ["minmax"] + ([spec.calibration.method.value] if spec.mode is QuantMode.static
                                and spec.calibration.method.value != "minmax" else [])
        candidates = [ref.quantize_weight(o.weights_before[n], cfg["bits"], cfg["symmetric"], cfg["per_channel"],
                                          spec.narrow_range, method, spec.calibration.percentile) for method in methods]
        r = min(candidates, key=lambda c: float(np.max(np.abs(scale - np.asarray(c.scale, np.float64).reshape(-1))
                                                       / np.asarray(c.scale, np.float64).reshape(-1))))
        rs, rz = np.asarray(r.scale, np.float64).reshape(-1), np.asarray(r.zero_point).reshape(-1)
        err = float(np.max(np.abs(scale - rs) / rs))
        zerr = int(np.max(np.abs(zp.astype(np.int64) - rz)))
        mism = float((np.asarray(t.q) != r.q).mean())
        off = int(np.max(np.abs(np.asarray(t.q, np.int64) - r.q)))
        worst_scale, worst_int = max(worst_scale, err), max(worst_int, mism)
        if err > tol.scale_rtol:
            fails.append(f"{n}: scale off by {err:.2e} relative (tolerance {tol.scale_rtol:g})")
        if zerr > tol.zero_point:
            fails.append(f"{n}: zero-point off by {zerr} (reference {rz[:3].tolist()}..., got {zp[:3].tolist()}...)")
        if mism > tol.int_mismatch or off > 1:
            fails.append(f"{n}: {mism:.2%} of integers differ from the reference (max by {off})")
    return _result("qparams", fails, {"max_scale_rel_err": worst_scale, "int_mismatch": worst_int},
                   f"scales within {worst_scale:.1e}, integers differ at {worst_int:.2%}")


@check("dequant_error")
def check_dequant_error(adapter, o: Outcome) -> CheckResult:
    """Dequantized weights lie within half a step of the originals (linear) or within the log step (log)."""
    spec: QuantizationSpec = o.case.spec
    if spec.mode is QuantMode.qat:
        return _na("dequant_error", "QAT trains the weights: the originals are not the target")
    slack = o.case.tolerance.step_slack
    qw, want = _quantized(adapter, o), _expected_quant_layers(o)
    fails, worst = [], 0.0
    for n, cfg in want.items():
        t = qw.get(n)
        if t is None:
            continue
        w = o.weights_before[n].astype(np.float64)
        deq = np.asarray(t.dequantize(), np.float64)
        if deq.shape != w.shape:
            fails.append(f"{n}: dequantized shape {deq.shape} != {w.shape}")
            continue
        if spec.mapping is Mapping.log:
            r = ref.log_quantize(w, cfg["bits"], spec.log_base, cfg["per_channel"])
            live = (r.sign != 0) & (deq != 0)
            steps = np.abs(np.log(np.abs(deq[live]) / np.abs(w[live])) / np.log(spec.log_base))
            err = float(steps.max()) if steps.size else 0.0
            wrong_sign = int((np.sign(deq[live]) != np.sign(w[live])).sum())
            worst = max(worst, err)
            if err > 0.5 + slack or wrong_sign:
                fails.append(f"{n}: {err:.3f} log steps from the original (at most 0.5), {wrong_sign} signs flipped")
            continue
        scale = np.asarray(t.scale, np.float64).reshape(-1)
        zp = np.asarray(t.zero_point, np.float64).reshape(-1)
        qmin, qmax = qrange(cfg["bits"], cfg["symmetric"], spec.narrow_range)
        if cfg["per_channel"]:
            scale, zp = scale[:, None], zp[:, None]
        # values up to half a step beyond the grid's ends round onto it; farther ones are clipped (percentile)
        lo, hi = scale * (qmin - zp - 0.5), scale * (qmax - zp + 0.5)
        inside = (w >= lo) & (w <= hi)
        ratio = np.abs(deq - w) / np.broadcast_to(scale, w.shape)
        err = float(ratio[inside].max()) if inside.any() else 0.0
        worst = max(worst, err)
        if err > 0.5 + slack:
            fails.append(f"{n}: a dequantized weight is {err:.3f} steps from the original (at most 0.5)")
        clipping = spec.mode is QuantMode.static and spec.calibration.method.value != "minmax"
        if (~inside).mean() > 0.01 and not clipping:  # a clipping method's range is judged by qparams
            fails.append(f"{n}: {(~inside).mean():.1%} of the weights fall outside the quantized range")
    return _result("dequant_error", fails, {"max_error_in_steps": worst}, f"within {worst:.3f} steps")


@check("output_close")
def check_output_close(adapter, o: Outcome) -> CheckResult:
    """The quantized model's logits stay close to FP32 on calibration-like inputs (relative L2)."""
    limit = o.case.tolerance.output_rel_l2
    if limit is None:
        return _na("output_close", "no output tolerance for this bit width")
    x = eval_inputs(o.case.model)
    y0, y1 = np.asarray(adapter.run(o.original, x), np.float64), np.asarray(adapter.run(o.model, x), np.float64)
    rel = float(np.linalg.norm(y1 - y0) / max(np.linalg.norm(y0), 1e-12))
    ok = rel <= limit
    return _result("output_close", [] if ok else [f"relative L2 to FP32 {rel:.4f} > {limit}"],
                   {"rel_l2_to_fp32": rel}, f"relative L2 to FP32 {rel:.4f}")


@check("activation_bits")
def check_activation_bits(adapter, o: Outcome) -> CheckResult:
    """The export quantizes activations to `activation_bits` (seen as the zero-point type of activation QDQ)."""
    spec: QuantizationSpec = o.case.spec
    b = spec.activation_bits
    if b not in (4, 8, 16):
        return _na("activation_bits", f"ONNX has no {b}-bit integer type: not observable in the export")
    path = _export(adapter, o)
    from ..onnx.inspect import initializers, load, qdq_nodes

    proto = load(path)
    consts = {i.name for i in initializers(proto)}
    acts = [q for q in qdq_nodes(proto) if q.op == "QuantizeLinear" and q.input not in consts]
    if not acts:
        return _result("activation_bits", ["no QuantizeLinear on an activation in the export"])
    widths = sorted({int(q.zero_point_dtype.replace("U", "").replace("INT", "")) if q.zero_point_dtype else 8
                     for q in acts})
    ok = widths == [b]
    return _result("activation_bits", [] if ok else [f"activation QuantizeLinear widths {widths}, spec asks {b}"],
                   {"activation_qdq": len(acts)}, f"{len(acts)} activation QuantizeLinear at {b} bits")


# ---- distillation -------------------------------------------------------------------------------------------------

@check("teacher_frozen")
def check_teacher_frozen(adapter, o: Outcome) -> CheckResult:
    """The teacher's weights are bit-for-bit unchanged by distillation."""
    now = adapter.weights(o.teacher)
    before = o.teacher_weights_before or {}
    changed = [n for n in before if n not in now or not np.array_equal(now[n], before[n])]
    return _result("teacher_frozen", [f"teacher weights changed: {changed[:4]}"] if changed else [],
                   {"changed_layers": len(changed)}, f"{len(before)} teacher layers unchanged")


@check("agreement_rises")
def check_agreement_rises(adapter, o: Outcome) -> CheckResult:
    """The student moves towards the teacher: KL(teacher || student) falls, argmax agreement does not fall."""
    spec: DistillationSpec = o.case.spec
    x = eval_inputs(o.case.model, batch=16)
    t = np.asarray(adapter.run(o.teacher, x))
    s0, s1 = np.asarray(adapter.run(o.original, x)), np.asarray(adapter.run(o.model, x))
    kl0, kl1 = kl_divergence(t, s0, spec.temperature), kl_divergence(t, s1, spec.temperature)
    a0, a1 = float((t.argmax(-1) == s0.argmax(-1)).mean()), float((t.argmax(-1) == s1.argmax(-1)).mean())
    fails = []
    if not kl1 < kl0:
        fails.append(f"KL(teacher || student) {kl0:.5f} -> {kl1:.5f}: did not fall")
    if a1 < a0:
        fails.append(f"argmax agreement {a0:.0%} -> {a1:.0%}: fell")
    return _result("agreement_rises", fails, {"kl_before": kl0, "kl_after": kl1, "agree_before": a0,
                                              "agree_after": a1}, f"KL {kl0:.4f} -> {kl1:.4f}, agreement {a0:.0%} -> {a1:.0%}")


@check("student_layers")
def check_student_layers(adapter, o: Outcome) -> CheckResult:
    """A student cut from the teacher keeps the requested number of Transformer layers."""
    spec: DistillationSpec = o.case.spec
    teacher_layers = o.structure_before.num_layers if o.structure_before is not None else 0
    want = len(spec.student.layers_to_keep(teacher_layers))
    structure = adapter.structure(o.model)
    got = structure.num_layers if structure is not None else len({la.block for la in adapter.layers(o.model)
                                                                  if la.block is not None})
    return _result("student_layers", [] if got == want else [f"student has {got} layers, spec asks {want}"],
                   {"student_layers": got}, f"{got} layers")


@check("layer_map")
def check_layer_map(adapter, o: Outcome) -> CheckResult:
    """The feature/relation losses pair exactly the core's layers (`DistillationSpec.resolved_layer_map`), as the
    stage logged them in ``ctx.history['layer_map']`` (one (student, teacher) point per pair)."""
    spec: DistillationSpec = o.case.spec
    teacher_layers = o.structure_before.num_layers if o.structure_before is not None else 0
    student_layers = len(spec.student.layers_to_keep(teacher_layers)) if spec.student is not None else teacher_layers
    want = [tuple(p) for p in spec.resolved_layer_map(student_layers, teacher_layers)]
    got = [(int(s), int(t)) for s, t in o.history.get("layer_map", [])]
    fails = [] if got == want else [f"the losses paired {got or 'nothing (not logged)'}, the spec means {want}"]
    return _result("layer_map", fails, {"pairs": len(got)}, f"{len(got)} pairs {got}")


# ---- low-rank -------------------------------------------------------------------------------------------------------

def _factorisations(adapter, o: Outcome) -> dict:
    """Per selected layer: expected rank (None: left alone), observed rank and the product of its factors."""
    if "lowrank" in o.cache:
        return o.cache["lowrank"]
    spec: LowRankSpec = o.case.spec
    after = _after(adapter, o)
    out = {}
    for n in selected_names(o, spec):
        w = o.weights_before[n]
        r = ref.rank_for(w, spec.rank, spec.energy)
        expected = r if (spec.force or ref.saves_parameters(w.shape, r)) else None
        parts = sorted((k, v) for k, v in after.items() if k.startswith(n + ".") or k.startswith(n + "_"))
        if len(parts) == 2 and all(v.ndim == 2 for _, v in parts):
            a, b = parts[0][1], parts[1][1]
            first, second = (a, b) if a.shape[1] == w.shape[1] and b.shape[0] == w.shape[0] else (b, a)
            if first.shape[1] != w.shape[1] or second.shape[0] != w.shape[0] or first.shape[0] != second.shape[1]:
                out[n] = {"expected": expected, "rank": None, "product": None,
                          "problem": f"factors {a.shape} and {b.shape} do not compose to {w.shape}"}
                continue
            product = second.astype(np.float64) @ first.astype(np.float64)
            out[n] = {"expected": expected, "rank": first.shape[0], "product": product, "how": "factors"}
        elif n in after and after[n].shape == w.shape:
            rank = numerical_rank(after[n])
            out[n] = {"expected": expected, "rank": rank, "product": after[n].astype(np.float64), "how": "dense"}
        else:
            out[n] = {"expected": expected, "rank": None, "product": None,
                      "problem": f"neither {n} nor two factors named {n}.* found after factorisation"}
    o.cache["lowrank"] = out
    return out


@check("rank")
def check_rank(adapter, o: Outcome) -> CheckResult:
    """Factorised layers have the requested rank (rank, or the energy rule); others are left whole."""
    fails, done = [], 0
    for n, f in _factorisations(adapter, o).items():
        if f.get("problem"):
            fails.append(f"{n}: {f['problem']}")
            continue
        full = min(o.weights_before[n].shape)
        if f["expected"] is None:
            if f["rank"] != full:
                fails.append(f"{n}: factorised to rank {f['rank']} although it would not save parameters")
        elif f["rank"] != f["expected"]:
            fails.append(f"{n}: rank {f['rank']}, expected {f['expected']}")
        else:
            done += 1
    return _result("rank", fails, {"factorised": done}, f"{done} layers at the requested rank")


@check("reconstruction")
def check_reconstruction(adapter, o: Outcome) -> CheckResult:
    """||W - factors|| equals the truncated-SVD optimum (Eckart-Young) within tolerance."""
    rtol = o.case.tolerance.lowrank_rtol
    fails, worst = [], 0.0
    for n, f in _factorisations(adapter, o).items():
        if f.get("problem") or f["expected"] is None or f["product"] is None:
            continue
        w = o.weights_before[n].astype(np.float64)
        err = float(np.linalg.norm(w - f["product"]))
        best = ref.optimal_error(w, f["expected"])
        gap = (err - best) / float(np.linalg.norm(w))
        worst = max(worst, gap)
        if gap > rtol:
            fails.append(f"{n}: error {err:.5f}, optimum {best:.5f} (gap {gap:.2e} of ||W||)")
    return _result("reconstruction", fails, {"max_gap": worst}, f"within {worst:.1e} of the optimum")


# ---- finetune ---------------------------------------------------------------------------------------------------------

@check("keeps_zeros")
def check_keeps_zeros(adapter, o: Outcome) -> CheckResult:
    """Weights pruned before training stay exactly zero, and training did change the other weights."""
    mid, after = o.weights_mid or {}, _after(adapter, o)
    revived, changed = 0, 0
    for n, w in mid.items():
        if n not in after or after[n].shape != w.shape:
            continue
        revived += int(((w == 0) & (after[n] != 0)).sum())
        changed += int((w != after[n]).sum())
    fails = []
    if revived:
        fails.append(f"{revived} pruned weights became non-zero during training")
    if not changed:
        fails.append("no weight changed: the stage did not train")
    return _result("keeps_zeros", fails, {"revived": revived, "changed": changed},
                   f"zeros kept, {changed} weights trained")


# ---- ONNX -------------------------------------------------------------------------------------------------------------

def _export(adapter, o: Outcome):
    if "onnx" not in o.cache:
        from pathlib import Path
        path = Path(o.workdir) / "model.onnx"
        example = eval_inputs(o.case.model, batch=2)
        o.cache["onnx"] = Path(adapter.export_onnx(o.model, path, example))
    return o.cache["onnx"]


@check("onnx")
def check_onnx(adapter, o: Outcome) -> CheckResult:
    """The compressed model exports, passes onnx.checker, runs in ORT and matches the framework;
    quantized exports carry QDQ or integer ops, pruned zeros survive, factorised layers stay factorised."""
    from ..onnx.inspect import check_model, summarize
    from ..onnx.runtime import compare_outputs, run_onnx

    tol = o.case.tolerance
    path = _export(adapter, o)
    check_model(path)
    summary = summarize(path)
    x = eval_inputs(o.case.model, batch=8)  # a batch size the export example did not have: dynamic axes
    y_ort = run_onnx(path, x, threads=1)
    y_fw = np.asarray(adapter.run(o.model, x))
    spec = o.case.spec
    fails = []
    quantized = isinstance(spec, QuantizationSpec)
    if quantized:
        rel = float(np.linalg.norm(y_ort - y_fw) / max(np.linalg.norm(y_fw), 1e-12))
        numbers = {"ort_rel_l2": rel}
        if not (y_ort.shape == y_fw.shape and rel <= tol.onnx_quant_rel_l2):
            fails.append(f"ORT vs {adapter.name}: relative L2 {rel:.4f} > {tol.onnx_quant_rel_l2} "
                         f"(shapes {y_ort.shape} / {y_fw.shape})")
        if spec.mapping is Mapping.log and not summary.quantized:
            # ONNX has no log-quantization op: the levels must survive as float constants instead
            levelled = [m for m in summary.matrices() if m.name in _few_level_constants(path, 2 ** spec.bits)]
            want = len(_expected_quant_layers(o))
            numbers["log_level_constants"] = len(levelled)
            if len(levelled) < want:
                fails.append(f"log mapping: {len(levelled)} weight constants with at most {2 ** spec.bits} levels "
                             f"per channel in the export, {want} layers quantized")
        elif not summary.quantized:
            fails.append("the export has no QuantizeLinear/DequantizeLinear or integer ops")
        consts = {i.name for i in summary.initializers}
        weight_dq = [q for q in summary.qdq if q.op == "DequantizeLinear" and q.input in consts]
        per_channel = spec.granularity is QuantGranularity.per_channel and not spec.overrides
        numbers["weight_dequantize_nodes"] = len(weight_dq)
        if weight_dq and per_channel and not any(q.per_channel and q.axis is not None for q in weight_dq):
            fails.append(f"per-channel weights, but none of {len(weight_dq)} weight DequantizeLinear nodes has "
                         "per-channel scales with an axis")
        if weight_dq and spec.granularity is QuantGranularity.per_tensor and any(q.per_channel for q in weight_dq):
            fails.append("per-tensor weights, but a weight DequantizeLinear has per-channel scales")
    else:
        cmp = compare_outputs(y_ort, y_fw, tol.onnx_atol, tol.onnx_rtol)
        if not cmp.ok:
            fails.append(f"ORT vs {adapter.name}: {cmp}")
        numbers = {"ort_max_abs": cmp.max_abs}
    pruning = [s for s in (spec, *o.case.pre) if isinstance(s, PruningSpec)]
    if pruning and not quantized:
        after = _after(adapter, o)
        expected = sum(int((after[n] == 0).sum()) for n in selected_names(o, pruning[0]) if n in after)
        numbers.update(zeros_expected=expected, zeros_in_onnx=summary.zeros_in_weights)
        if summary.zeros_in_weights < 0.99 * expected:
            fails.append(f"pruned zeros lost in export: {summary.zeros_in_weights} zero weights in the graph, "
                         f"{expected} in the model")
    if isinstance(spec, LowRankSpec):
        want = sorted(f["expected"] for f in _factorisations(adapter, o).values() if f["expected"] is not None)
        got = sorted(f.rank for f in summary.factorised)
        numbers["factorised_matmuls"] = len(got)
        if len(got) < len(want) or not set(want) <= set(got):
            fails.append(f"{len(got)} factorised MatMul pairs (ranks {sorted(set(got))}) in the graph, "
                         f"expected {len(want)} (ranks {sorted(set(want))})")
    if not fails:
        return CheckResult("onnx", True, f"ORT matches; {sum(summary.op_counts.values())} nodes", numbers)
    return _result("onnx", fails, numbers)


def _few_level_constants(path, levels: int) -> set[str]:
    """Names of 2-D float constants with at most `levels` distinct values in every row or every column."""
    import onnx
    from onnx import numpy_helper

    out = set()
    for t in onnx.load(str(path)).graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.ndim != 2 or arr.dtype.kind != "f" or arr.size < 16:
            continue
        if max(len(np.unique(r)) for r in arr) <= levels or max(len(np.unique(c)) for c in arr.T) <= levels:
            out.add(t.name)
    return out

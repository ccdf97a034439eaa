"""Graph passes over exported ONNX protos: framework-neutral clean-ups every exporter's output may need.

Each pass takes an `Any`, edits it in place and returns how many places it changed (0: the
pattern is absent, nothing happens), so a backend's export calls the passes its exporter needs:

- `rename_io`, `name_dynamic_axes`: neutral input names, the output "logits", named batch/sequence axes;
- `constants_to_initializers`: parameters emitted as Constant nodes (paddle2onnx) become initializers;
- `fold_constant_shapes`: layout-only chains on constants (Shape -> Gather -> Concat -> Reshape of a
  5-D einsum kernel, as tf2onnx writes Keras MultiHeadAttention) evaluated at export, so every projection is
  a MatMul on a 2-D initializer (its zeros countable, its weights matchable for QDQ);
- `fuse_layer_norms`: an unfused LayerNorm (moments + batch_normalization, 11 element-wise nodes with
  GlobalAveragePool means) -> one ONNX LayerNormalization, which ONNX Runtime's fusions recognise;
- `canonical_gelu`: 0.5 x erfc(-x / sqrt 2) -> 0.5 x (1 + erf(x / sqrt 2)) in the node order ONNX Runtime
  fuses into Gelu / BiasGelu;
- `dequantize_next_to_matmul`: Q -> DQ -> Reshape -> MatMul => Q -> Reshape -> DQ -> MatMul, the shape
  ONNX Runtime fuses into integer MatMuls;
- `collapse_tensordot`: Reshape([-1, K]) -> MatMul(W [K, N]) -> Reshape(leading dims of x + [N]) (tf2onnx's
  Keras Dense) => one MatMul on x, so the bias Add follows its MatMul as ONNX Runtime's Attention / BiasGelu
  fusions need;
- `canonical_attention_mask`: any affine c * (1 - mask) chain from a 2-D graph input to the [B, 1, 1, S] bias
  added before a Softmax (tf2onnx: Cast, Sub, Mul, Unsqueeze, Unsqueeze; paddle2onnx: Cast, Mul(-1), Add(1),
  Mul(c), Unsqueeze([1, 2])) => Unsqueeze(1), Unsqueeze(2), Cast, Sub(1, .), Mul(c), the order ONNX Runtime's
  Attention fusion matches.

Needs onnx and numpy only (the core never imports a framework).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def rename_io(proto: Any, renames: dict[str, str]) -> Any:
    """Rename graph inputs/outputs (and every reference to them)."""
    g = proto.graph
    for vi in list(g.input) + list(g.output):
        if vi.name in renames:
            vi.name = renames[vi.name]
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    return proto



def name_dynamic_axes(proto: Any, names: tuple[str, ...] = ("batch", "sequence")) -> int:
    """Name every unsized axis of the graph inputs/outputs: axis 0 `names[0]`, later axes `names[1]` (the
    exporter's own names, e.g. paddle2onnx's, are replaced, so every backend's file reads alike); returns how
    many axes were named."""
    named = 0
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for j, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.dim_value:
                d.dim_param = names[0] if j == 0 else names[min(j, len(names) - 1)]
                named += 1
    return named


def constants_to_initializers(proto: Any) -> int:
    """Every Constant node holding a tensor becomes a graph initializer of its output's name (paddle2onnx
    without its optimizer emits parameters so; QDQ and the inspectors read initializers); returns how many."""
    graph = proto.graph
    keep, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            t.name = node.output[0]
            graph.initializer.append(t)
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


#: ops that only move or describe a constant's values (never change them): safe to evaluate at export
_LAYOUT_OPS = frozenset({"Shape", "Gather", "Concat", "Reshape", "Unsqueeze", "Squeeze", "ReduceProd", "Cast",
                         "Slice", "Transpose", "Identity", "Flatten"})


def fold_constant_shapes(proto: Any) -> int:
    """Evaluate every layout-only node (`_LAYOUT_OPS`) whose inputs are all constants, replacing it by an
    initializer (onnx's reference evaluator); returns how many were folded. Quantize/Dequantize nodes are
    never folded, so QDQ weights stay QDQ."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    values: dict[str, np.ndarray] = {}
    kept, folded = [], 0
    for n in g.node:
        if n.op_type in _LAYOUT_OPS and n.input and all(i in consts for i in n.input if i) and len(n.output) == 1:
            feeds = {i: values.setdefault(i, numpy_helper.to_array(consts[i])) for i in n.input if i}
            out = ReferenceEvaluator(n).run(None, feeds)[0]
            tensor = numpy_helper.from_array(np.asarray(out), n.output[0])
            g.initializer.append(tensor)
            consts[n.output[0]] = tensor
            values[n.output[0]] = np.asarray(out)
            folded += 1
        else:
            kept.append(n)
    if folded:
        _drop_dead(g, kept)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for t in [t for t in g.initializer if t.name not in used]:  # the folded chains' own constants
            g.initializer.remove(t)
    return folded



def fuse_layer_norms(proto: Any) -> int:
    """tf_keras' unfused LayerNormalization (epsilon < 1e-5, as BERT's 1e-12) -> one ONNX LayerNormalization.

    tf2onnx writes `tf.nn.moments` + `batch_normalization` as eleven element-wise nodes, the means as
    GlobalAveragePool, which ONNX Runtime's LayerNorm fusion does not recognise:
        mean = GAP(x); d = x - mean; var = GAP(d * d); r = 1 / sqrt(var + eps); m = r * gamma
        y = x * m + (beta - mean * m)
    Matched exactly (constant eps, gamma, beta) and replaced by LayerNormalization(x, gamma, beta, eps) on
    the last axis (opset 17); returns how many. The dead nodes are dropped.
    """
    from onnx import helper, numpy_helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in proto.opset_import):
        return 0
    g = proto.graph
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name: t for t in g.initializer}

    def op(name: str, kind: str) -> Optional[Any]:
        n = producer.get(name)
        return n if n is not None and n.op_type == kind else None

    def other(node: Any, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    replaced = {}
    for add in [n for n in nodes if n.op_type == "Add"]:
        try:
            scaled, sub = op(add.input[0], "Mul"), op(add.input[1], "Sub")
            if scaled is None or sub is None:
                continue
            m = producer[scaled.input[1]] if scaled.input[1] in producer else None
            x = scaled.input[0]
            if m is None or m.op_type != "Mul":
                continue
            beta, mean_m = sub.input
            mean_times = op(mean_m, "Mul")
            mean = op(mean_times.input[0], "GlobalAveragePool")
            if mean is None or mean.input[0] != x or mean_times.input[1] != m.output[0]:
                continue
            recip, gamma = m.input
            sqrt = op(op(recip, "Reciprocal").input[0], "Sqrt")
            plus_eps = op(sqrt.input[0], "Add")
            var, eps = plus_eps.input
            sq = op(op(var, "GlobalAveragePool").input[0], "Mul")
            diff = op(sq.input[0], "Sub")
            if sq.input[0] != sq.input[1] or list(diff.input) != [x, mean.output[0]]:
                continue
            if not (eps in consts and gamma in consts and beta in consts):
                continue
            epsilon = float(numpy_helper.to_array(consts[eps]).reshape(-1)[0])
            if numpy_helper.to_array(consts[gamma]).ndim != 1 or numpy_helper.to_array(consts[beta]).ndim != 1:
                continue
        except (AttributeError, KeyError, ValueError):  # a node of the pattern is missing: not a LayerNorm
            continue
        replaced[id(add)] = helper.make_node("LayerNormalization", [x, gamma, beta], [add.output[0]],
                                             name=f"{add.name}/LayerNormalization", axis=-1, epsilon=epsilon)
    if not replaced:
        return 0
    _drop_dead(g, [replaced.get(id(n), n) for n in nodes])
    return len(replaced)


def canonical_gelu(proto: Any) -> int:
    """tf_keras' exact GELU, 0.5 x erfc(-x / sqrt 2), rewritten as 0.5 x (1 + erf(x / sqrt 2)) in the node
    order PyTorch exports (Div, Erf, Add, Mul, Mul), which ONNX Runtime fuses into Gelu / BiasGelu;
    tf2onnx's form (Neg, Mul, Erf, Sub(1, .)) is not recognised. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = proto.graph
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def const(name: str, value: float) -> bool:
        return name in consts and consts[name].size == 1 and abs(float(consts[name].reshape(-1)[0]) - value) < 1e-6

    def kind(name: str, op_type: str) -> Optional[Any]:
        n = producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def operand(node: Any, value: float) -> Optional[str]:
        """The other input of a binary node one of whose inputs is the constant `value`."""
        a, b = node.input
        return b if const(a, value) else a if const(b, value) else None

    replaced = {}
    for mul in [n for n in nodes if n.op_type == "Mul"]:
        for half_name, erfc_name in (tuple(mul.input), tuple(reversed(mul.input))):
            half, erfc = kind(half_name, "Mul"), kind(erfc_name, "Sub")
            if half is None or erfc is None or not const(erfc.input[0], 1.0):
                continue
            x = operand(half, 0.5)
            erf = kind(erfc.input[1], "Erf")
            scaled = kind(erf.input[0], "Mul") if erf is not None else None
            neg = kind(operand(scaled, float(1 / np.sqrt(2))) or "", "Neg") if scaled is not None else None
            if x is None or neg is None or neg.input[0] != x:
                continue
            base = mul.name
            init = [numpy_helper.from_array(np.array(np.sqrt(2), np.float32), f"{base}/sqrt2"),
                    numpy_helper.from_array(np.array(1, np.float32), f"{base}/one"),
                    numpy_helper.from_array(np.array(0.5, np.float32), f"{base}/half")]
            g.initializer.extend(init)
            replaced[id(mul)] = [
                helper.make_node("Div", [x, f"{base}/sqrt2"], [f"{base}/div"], name=f"{base}/Div"),
                helper.make_node("Erf", [f"{base}/div"], [f"{base}/erf"], name=f"{base}/Erf"),
                helper.make_node("Add", [f"{base}/erf", f"{base}/one"], [f"{base}/add"], name=f"{base}/Add"),
                helper.make_node("Mul", [x, f"{base}/add"], [f"{base}/mul"], name=f"{base}/Mul"),
                helper.make_node("Mul", [f"{base}/mul", f"{base}/half"], [mul.output[0]], name=f"{base}/Half")]
            break
    if not replaced:
        return 0
    nodes = [m for n in nodes for m in replaced.get(id(n), [n])]
    _drop_dead(g, nodes)
    return len(replaced)


def _drop_dead(g: Any, nodes: list) -> None:
    """Write `nodes` into the graph without the ones nothing reads, and drop the constants they alone read."""
    before = {i for n in nodes for i in n.input}
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del g.node[:]
    g.node.extend(nodes)
    for t in [t for t in g.initializer if t.name in before and t.name not in used]:
        g.initializer.remove(t)


def dequantize_next_to_matmul(proto: Any) -> int:
    """Q -> DQ -> Reshape -> MatMul  =>  Q -> Reshape -> DQ -> MatMul; returns how many were moved.

    Keras' Dense on a [batch, seq, hidden] input is `tf.tensordot`, which tf2onnx writes as
    Reshape -> MatMul -> Reshape; the activation fake-quant sits before the Reshape. ONNX Runtime only
    fuses DQ -> MatMul <- DQ into an integer MatMul when both DequantizeLinear feed the MatMul directly,
    so the (per-tensor) DequantizeLinear moves after the Reshape, which then reshapes the integers.
    """
    from onnx import helper

    g = proto.graph
    # protobuf's repeated fields copy on extend: edit a Python list of the nodes, write it back once
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name for t in g.initializer}
    moved = 0
    for matmul in [n for n in nodes if n.op_type == "MatMul"]:
        reshape = producer.get(matmul.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            continue
        dq = producer.get(reshape.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in consts or \
                any(a.name == "axis" for a in dq.attribute) and _is_per_axis(g, dq):
            continue
        integers = f"{reshape.output[0]}_quantized"
        new_dq = helper.make_node("DequantizeLinear", [integers, *dq.input[1:]], [reshape.output[0]],
                                  name=f"{reshape.name}/DequantizeLinear")
        reshape.input[0], reshape.output[0] = dq.input[0], integers
        nodes.insert(next(i for i, n in enumerate(nodes) if n is reshape) + 1, new_dq)
        producer[integers], producer[new_dq.output[0]] = reshape, new_dq
        moved += 1
    # tensordot also reads the input's shape: Shape of the integers is the same, and frees the old DQ
    dequantized = {n.output[0]: n.input[0] for n in nodes if n.op_type == "DequantizeLinear"}
    for n in nodes:
        if n.op_type == "Shape" and n.input[0] in dequantized and dequantized[n.input[0]] not in consts:
            n.input[0] = dequantized[n.input[0]]
    used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or set(n.output) & used]
    del g.node[:]
    g.node.extend(nodes)
    return moved


def _is_per_axis(graph: Any, dq: Any) -> bool:
    scale = next((t for t in graph.initializer if t.name == dq.input[1]), None)
    return scale is None or len(scale.dims) > 0 and int(np.prod(scale.dims)) > 1



def _ranks(proto: Any) -> dict[str, int]:
    """The rank of every value onnx's shape inference can tell (graph inputs, outputs, value_info)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - contrib ops or odd graphs: fall back to what the file declares
        inferred = proto
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = len(t.shape.dim)
    for t in g.initializer:
        out[t.name] = len(t.dims)
    return out


def _int_list(consts: dict, name: str) -> Optional[list[int]]:
    from onnx import numpy_helper

    if name not in consts:
        return None
    value = numpy_helper.to_array(consts[name])
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" else None


def _index(graph: Any, nodes: list) -> tuple[dict, dict, dict]:
    """(output -> producing node, value -> reading nodes, initializer name -> tensor) of a graph's nodes."""
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers, {t.name: t for t in graph.initializer}


def collapse_tensordot(proto: Any) -> int:
    """Reshape(x, [-1, K]) -> MatMul(., W [K, N]) -> Reshape(., Concat(Gather(Shape(x), [0..r-2]), [N]))  =>
    MatMul(x, W) on the rank-r x; returns how many MatMuls were collapsed.

    tf2onnx writes Keras' Dense on [batch, seq, hidden] (`tf.tensordot`) this way; MatMul broadcasts over the
    leading axes, so one MatMul computes the same values, and the bias Add then reads the MatMul directly (ONNX
    Runtime's Attention, BiasGelu and SkipLayerNormalization-bias fusions match MatMul -> Add only). The target
    shape must be exactly x's leading axes + [N] (traced through Cast nodes); x's rank comes from shape
    inference, unknown rank: left alone. The dead Reshape/Shape chains are dropped.
    """
    g = proto.graph
    nodes = list(g.node)
    producer, consumers, consts = _index(g, nodes)
    ranks = _ranks(proto)

    def through_casts(name: str) -> Optional[Any]:
        n = producer.get(name)
        while n is not None and n.op_type in ("Cast", "Identity"):
            n = producer.get(n.input[0])
        return n

    def leading_axes_of(shape_name: str, x: str, n_out: int) -> bool:
        """`shape_name` is Concat(Gather(Shape(x), [0 .. r-2]), [n_out]) with r the rank of x."""
        concat = through_casts(shape_name)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
            return False
        gather, tail = through_casts(concat.input[0]), _int_list(consts, concat.input[1])
        if gather is None or gather.op_type != "Gather" or tail != [n_out]:
            return False
        shape = through_casts(gather.input[0])
        if shape is None or shape.op_type != "Shape" or shape.input[0] != x or \
                any(a.name == "end" or a.name == "start" and a.i != 0 for a in shape.attribute):
            return False
        idx, rank = _int_list(consts, gather.input[1]), ranks.get(x)
        return rank is not None and rank >= 3 and idx == list(range(rank - 1))

    collapsed = 0
    for matmul in [n for n in nodes if n.op_type == "MatMul"]:
        w = consts.get(matmul.input[1])
        pre = producer.get(matmul.input[0])
        post = consumers.get(matmul.output[0], [])
        if w is None or len(w.dims) != 2 or pre is None or pre.op_type != "Reshape" or len(post) != 1 or \
                post[0].op_type != "Reshape" or matmul.output[0] in {o.name for o in g.output}:
            continue
        k, n_out = int(w.dims[0]), int(w.dims[1])
        x = pre.input[0]
        if _int_list(consts, pre.input[1]) != [-1, k] or not leading_axes_of(post[0].input[1], x, n_out):
            continue
        matmul.input[0] = x
        matmul.output[0] = post[0].output[0]
        post[0].output[0] = f"{post[0].output[0]}/collapsed"  # now unread: dropped below
        collapsed += 1
    if collapsed:
        _drop_dead(g, list(g.node))
        alive = {o for n in g.node for o in n.output}
        for vi in [vi for vi in g.value_info if vi.name not in alive]:  # e.g. the 2-D MatMul outputs
            g.value_info.remove(vi)
    return collapsed


#: element-wise ops an attention mask chain may hold (with one scalar constant operand each)
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div"})


def _through_identity(name: str, producer: dict) -> str:
    n = producer.get(name)
    while n is not None and n.op_type == "Identity":
        name = n.input[0]
        n = producer.get(name)
    return name


def _mask_chain(name: str, producer: dict, consts: dict, graph_inputs: dict) -> Optional[tuple]:
    """Walk a mask bias back to its graph input: (input name, alpha, beta, axes the Unsqueezes insert, float
    type of the first Cast) for value = alpha * mask + beta, or None when the chain holds anything else."""
    from onnx import numpy_helper

    alpha, beta, unsqueezes, cast_to = 1.0, 0.0, [], None
    while name not in graph_inputs:
        n = producer.get(name)
        if n is None:
            return None
        if n.op_type == "Identity":
            name = n.input[0]
        elif n.op_type == "Unsqueeze":
            axes = _int_list(consts, n.input[1]) if len(n.input) > 1 else \
                next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
            if axes is None:
                return None
            unsqueezes.insert(0, axes)
            name = n.input[0]
        elif n.op_type == "Cast":
            cast_to = next(a.i for a in n.attribute if a.name == "to")
            if cast_to not in (1, 10, 11):  # float, float16, double
                return None
            name = n.input[0]
        elif n.op_type in _AFFINE and len(n.input) == 2:
            operands = [_through_identity(v, producer) for v in n.input]  # paddle2onnx: Identity(constant)
            scalar = [i for i, v in enumerate(operands) if v in consts and int(np.prod(consts[v].dims)) == 1]
            if len(scalar) != 1:
                return None
            c = float(numpy_helper.to_array(consts[operands[scalar[0]]]).reshape(-1)[0])
            other = n.input[1 - scalar[0]]
            # value = f(other): compose f after the chain below (a_in * m + b_in) into alpha * m + beta
            if n.op_type == "Add":
                f = (1.0, c)
            elif n.op_type == "Mul":
                f = (c, 0.0)
            elif n.op_type == "Sub":
                f = (1.0, -c) if scalar[0] == 1 else (-1.0, c)
            elif scalar[0] == 1 and c != 0:  # Div by a constant; a constant divided by the mask is not affine
                f = (1.0 / c, 0.0)
            else:
                return None
            alpha, beta = alpha * f[0], alpha * f[1] + beta
            name = other
        else:
            return None
    return name, alpha, beta, unsqueezes, cast_to


def _scale_as_div(scores: str, producer: dict, consts: dict, g: Any) -> None:
    """The scores' scaling Mul(qk, c) (found through Identity and Add(., 0)) becomes Div(qk, 1 / c) in place:
    ONNX Runtime takes the Add's first Mul parent as the mask, so a Mul scale hides the mask from it."""
    from onnx import numpy_helper

    n = producer.get(scores)
    while n is not None and (n.op_type == "Identity" or n.op_type == "Add" and any(
            i in consts and int(np.prod(consts[i].dims)) == 1 and
            float(numpy_helper.to_array(consts[i]).reshape(-1)[0]) == 0.0 for i in n.input)):
        n = producer.get(next(i for i in n.input if i not in consts))
    if n is None or n.op_type != "Mul":
        return
    operands = [_through_identity(v, producer) for v in n.input]
    scalar = [i for i, v in enumerate(operands) if v in consts and int(np.prod(consts[v].dims)) == 1]
    if len(scalar) != 1:
        return
    value = numpy_helper.to_array(consts[operands[scalar[0]]])
    if float(value.reshape(-1)[0]) == 0.0:
        return
    name = f"{n.output[0]}/divisor"
    g.initializer.append(numpy_helper.from_array((1 / value.astype(np.float64)).astype(value.dtype).reshape(()), name))
    consts[name] = g.initializer[-1]
    n.op_type = "Div"
    n.input[:] = [n.input[1 - scalar[0]], name]


def _feeds_softmax(name: str, consumers: dict) -> bool:
    """Whether `name` is read by a Softmax, directly or through Identity nodes (paddle2onnx writes those)."""
    readers = consumers.get(name, [])
    return any(r.op_type == "Softmax" or r.op_type == "Identity" and _feeds_softmax(r.output[0], consumers)
               for r in readers)


def canonical_attention_mask(proto: Any) -> int:
    """Rewrite every attention-mask bias c * (1 - mask) (c < 0, any chain of Cast, Identity, Unsqueeze and
    element-wise ops with scalar constants from a 2-D graph input to [B, 1, 1, S], added to the scores right
    before a Softmax) as Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(mask, [1]), [2]))), c): the one order ONNX
    Runtime's Attention fusion matches (tf2onnx puts the Unsqueezes last, paddle2onnx writes 1 - m as
    m * -1 + 1). Chains shared by several layers become one new chain; returns how many Adds were rewired."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    nodes = list(g.node)
    producer, consumers, consts = _index(g, nodes)
    graph_inputs = {vi.name: vi for vi in g.input if vi.name not in consts}
    made: dict[tuple, str] = {}
    new_nodes: list = []
    rewired = 0
    for add in [n for n in nodes if n.op_type == "Add" and len(n.input) == 2]:
        if not _feeds_softmax(add.output[0], consumers):
            continue
        for j, bias in enumerate(add.input):
            chain = _mask_chain(bias, producer, consts, graph_inputs) if bias in producer else None
            if chain is None:
                continue
            root, alpha, beta, unsqueezes, cast_to = chain
            dims = graph_inputs[root].type.tensor_type.shape.dim
            layout: list = ["b", "s"]
            for axes in unsqueezes:  # the axes each Unsqueeze inserts, in order: the result must be [b, 1, 1, s]
                for a in sorted(x % (len(layout) + len(axes)) for x in axes):
                    layout.insert(a, 1)
            if len(dims) != 2 or layout != ["b", 1, 1, "s"] or beta >= 0 or abs(alpha + beta) > 1e-6 * abs(beta):
                continue
            elem = graph_inputs[root].type.tensor_type.elem_type
            key = (root, beta, cast_to)
            if key not in made:
                base = f"{root}/canonical_mask_{len(made)}"
                float_type = cast_to or (elem if elem in (1, 10, 11) else TensorProto.FLOAT)
                dtype = {1: np.float32, 10: np.float16, 11: np.float64}[float_type]
                g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), f"{base}/axis1"),
                                      numpy_helper.from_array(np.array([2], np.int64), f"{base}/axis2"),
                                      numpy_helper.from_array(np.array(1, dtype), f"{base}/one"),
                                      numpy_helper.from_array(np.array(beta, dtype), f"{base}/filter")])
                chain_nodes = [helper.make_node("Unsqueeze", [root, f"{base}/axis1"], [f"{base}/u1"], name=f"{base}/U1"),
                               helper.make_node("Unsqueeze", [f"{base}/u1", f"{base}/axis2"], [f"{base}/u2"],
                                                name=f"{base}/U2")]
                last = f"{base}/u2"
                if elem != float_type:
                    chain_nodes.append(helper.make_node("Cast", [last], [f"{base}/cast"], name=f"{base}/Cast",
                                                        to=float_type))
                    last = f"{base}/cast"
                chain_nodes += [helper.make_node("Sub", [f"{base}/one", last], [f"{base}/inverted"], name=f"{base}/Sub"),
                                helper.make_node("Mul", [f"{base}/inverted", f"{base}/filter"], [f"{base}/bias"],
                                                 name=f"{base}/Mul")]
                new_nodes += chain_nodes
                made[key] = f"{base}/bias"
            add.input[j] = made[key]
            _scale_as_div(add.input[1 - j], producer, consts, g)
            rewired += 1
            break
    if rewired:
        _drop_dead(g, new_nodes + nodes)  # the new chains first: they read only a graph input
    return rewired


__all__ = ["canonical_attention_mask", "canonical_gelu", "collapse_tensordot", "constants_to_initializers",
           "dequantize_next_to_matmul", "fold_constant_shapes", "fuse_layer_norms", "name_dynamic_axes", "rename_io"]

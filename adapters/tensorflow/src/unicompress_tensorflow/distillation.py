"""DistillationSpec -> a GradientTape training loop with a frozen teacher (TFMOT has no distillation).

Losses (all emulated with TF ops): response = T^2 KL(softmax(t/T) || softmax(s/T)); feature = MSE or
cosine between mapped hidden states (with a learned Dense projection when widths differ); relation =
MiniLM's KL between attention distributions and between value relations softmax(V V^T / sqrt(d)).
Total = alpha * (response + feature_weight * feature + relation_weight * relation) + (1 - alpha) * task.
The blocks come from the stage's TransformerStructure (`ctx.plan.structure`) and the functional graph: each
block's hidden state is the first layer after its FFN's residual add. The student keeps some blocks: a zoo
model is rebuilt from its config, any other functional model is cut from its graph (`cut_blocks`).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import dataclasses  # noqa: E402
import math  # noqa: E402
from typing import Any, Optional  # noqa: E402

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.data.teacher import TEACHER_PREFIX, distillation_data, split_teacher_inputs  # noqa: E402
from unicompress.backend.types import TransformerStructure  # noqa: E402
from unicompress.errors import StructureError  # noqa: E402
from unicompress.specs import DistillationSpec, DistillKind, FeatureLoss, StudentSpec  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress.zoo import vit as zvit  # noqa: E402

from .discovery import _is_elementwise  # noqa: E402
from .graph import Graph, clone_layer, graph, nodes_in_order  # noqa: E402
from .layers import is_graph_model, unwrap  # noqa: E402
from .layers import structure as discover_structure  # noqa: E402
from .models import Patchify, ScaledDotProductAttention, build_bert, build_vit  # noqa: E402
from .training import train  # noqa: E402


# ---- blocks from the structure ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Block:
    """One Transformer block of a functional model, found from the structure and the graph.

    `output` is the model's layer (maybe a TFMOT wrapper) whose output is the block's hidden state: the first
    layer after the FFN's residual add (post-LN: its LayerNormalization; pre-LN: the add). `entry` is the
    residual-stream tensor entering the block, `members` the ids of the (unwrapped) layers between the two.
    `attention` is the block's self-attention layer (the relation loss reads the zoo's)."""

    number: int
    output: Any
    entry: Any
    members: frozenset
    attention: Any = None


def _is_add(layer: Any) -> bool:
    if isinstance(layer, keras.layers.Add):
        return True
    fn = getattr(layer, "symbol", None) if type(layer).__name__ == "TFOpLambda" else None
    return fn is not None and fn.replace("tf.", "", 1) in ("__operators__.add", "math.add", "add")


def _owner(model: Any, name: str) -> Optional[Any]:
    """The top-level layer (unwrapped) a structure name belongs to: itself, or the one it is a part of
    (``enc0.mha.query`` -> ``enc0.mha``)."""
    best = None
    for layer in model.layers:
        inner = unwrap(layer)
        if inner.name == name:
            return inner
        if name.startswith(inner.name + ".") and (best is None or len(inner.name) > len(best.name)):
            best = inner
    return best


def _residual(g: Graph, layer: Any) -> Optional[tuple[Any, Any]]:
    """(the residual add `layer`'s output reaches through element-wise layers, the add's input on that path)."""
    current = layer
    while True:
        nxt = g.consumers.get(id(current), [])
        if len(nxt) != 1:
            return None
        if _is_add(nxt[0]):
            return nxt[0], current
        if not _is_elementwise(nxt[0]):
            return None
        current = nxt[0]


def _post_norm(g: Graph, add: Any) -> Optional[Any]:
    """The LayerNormalization that is the only consumer of a residual add (post-LN), else None (pre-LN)."""
    nxt = g.consumers.get(id(add), [])
    return nxt[0] if len(nxt) == 1 and isinstance(nxt[0], keras.layers.LayerNormalization) else None


def _ancestors(g: Graph, layer: Any) -> set[int]:
    parents = {id(unwrap(c.layer)): c.parents for c in g.calls}
    seen, todo = set(), [layer]
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            todo += parents.get(id(current), [])
    return seen


def _descendants(g: Graph, layer: Any) -> set[int]:
    seen, todo = set(), list(g.consumers.get(id(layer), []))
    while todo:
        current = todo.pop()
        if id(current) not in seen:
            seen.add(id(current))
            todo += g.consumers.get(id(current), [])
    return seen


def find_blocks(model: Any, st: Optional[TransformerStructure]) -> list[Any]:
    """Per block of `st` (in block order): a `Block`, or a string saying why it cannot be tapped."""
    g = graph(model) if is_graph_model(model) else None
    if st is None or g is None:
        return []
    if st.shared_blocks:
        return [f"block {b}: its layers are shared with other blocks (one call per block is needed)"
                for b in range(st.num_layers)]
    outer = {id(unwrap(layer)): layer for layer in model.layers}
    out: list[Any] = []
    for b in range(st.num_layers):
        atts = [a for a in st.attention if a.block == b and a.kind == "self"]
        ffns = [f for f in st.ffn if f.block == b]
        if not ffns:
            out.append(f"block {b}: no FFN pair, so no block output to tap")
            continue
        ffn_out = _owner(model, ffns[-1].ffn_out)
        att = _owner(model, atts[0].output) if atts else None
        found = _residual(g, ffn_out) if ffn_out is not None else None
        first = _residual(g, att) if att is not None else found
        if found is None or first is None:
            out.append(f"block {b}: no residual add after {ffns[-1].ffn_out!r}"
                       f"{f' / {atts[0].output!r}' if atts else ''} in the graph")
            continue
        # post-LN when the first residual add feeds only a LayerNormalization (the block then ends in one too)
        norm = _post_norm(g, found[0]) if _post_norm(g, first[0]) is not None else None
        tap = norm if norm is not None else found[0]
        call = g.calls_of(first[0])[0]
        side = [kt for kt, p in zip(call.node.keras_inputs, call.parents) if p is not first[1]]
        if len(side) != 1:
            out.append(f"block {b}: the residual add {first[0].name!r} has no single residual input")
            continue
        entry = side[0]
        members = _descendants(g, unwrap(entry._keras_history.layer)) & _ancestors(g, tap)
        sdpa = [unwrap(outer[m]) for m in members if m in outer
                and isinstance(unwrap(outer[m]), ScaledDotProductAttention)]
        attention = sdpa[0] if sdpa else (_owner(model, atts[0].query) if atts else None)
        out.append(Block(b, outer[id(tap)], entry, frozenset(members), attention))
    return out


def require_blocks(blocks: list[Any], layer_map: list, side: str, st: Optional[TransformerStructure],
                   relation: bool) -> None:
    """StructureError (before any training) unless every block the layer map names was tapped."""
    need = sorted({p[0 if side == "student" else 1] for p in layer_map})
    found = st.summary() if st is not None else "no Transformer structure"
    if not layer_map or not blocks:
        raise StructureError(
            f"feature/relation distillation needs the {side}'s Transformer blocks, but none were found ({found}); "
            "the losses would pair nothing. Use a functional tf_keras model whose blocks end in a residual add "
            "(+ LayerNormalization), or declare the structure in the recipe (structure: roles ffn_out / "
            "attention_output per layer)")
    problems = [f"block {i}: not in the model ({len(blocks)} block(s))" if i >= len(blocks) else blocks[i]
                for i in need if i >= len(blocks) or isinstance(blocks[i], str)]
    if relation:
        problems += [f"block {i}: attention {type(blocks[i].attention).__name__} (relation distillation reads the "
                     "q/k/v inputs of unicompress' ScaledDotProductAttention; keras MultiHeadAttention is not "
                     "supported yet)" for i in need if i < len(blocks) and not isinstance(blocks[i], str)
                     and not isinstance(blocks[i].attention, ScaledDotProductAttention)]
    if problems:
        raise StructureError(f"the {side}'s layer map needs blocks {need}, found {found}: " + "; ".join(problems))


# ---- the student ---------------------------------------------------------------------------------------

def _attention_layers(model: keras.Model) -> list[ScaledDotProductAttention]:
    return [unwrap(layer) for layer in model.layers if isinstance(unwrap(layer), ScaledDotProductAttention)]


def zoo_config(model: keras.Model) -> Any:
    """The BertConfig/ViTConfig of a zoo-structured model, read from its layers."""
    get = model.get_layer
    att = _attention_layers(model)
    if not att or not is_graph_model(model):
        raise ValueError("building a student by dropping layers needs a zoo-structured functional model")
    if any(layer.name.startswith("vit.") for layer in model.layers):
        patch = next(layer for layer in model.layers if isinstance(layer, Patchify)).patch_size
        return zvit.ViTConfig(image_size=int(model.inputs[0].shape[1]), patch_size=patch,
                              hidden_size=att[0].num_heads * att[0].head_dim, num_hidden_layers=len(att),
                              num_attention_heads=att[0].num_heads,
                              intermediate_size=get("vit.encoder.layer.0.intermediate.dense").units,
                              layer_norm_eps=get("vit.layernorm").epsilon, num_labels=get("classifier").units)
    word = get("bert.embeddings.word_embeddings")
    return zbert.BertConfig(vocab_size=word.input_dim, hidden_size=word.output_dim, num_hidden_layers=len(att),
                            num_attention_heads=att[0].num_heads,
                            intermediate_size=get("bert.encoder.layer.0.intermediate.dense").units,
                            max_position_embeddings=get("bert.embeddings.position_embeddings").input_dim,
                            type_vocab_size=get("bert.embeddings.token_type_embeddings").input_dim,
                            layer_norm_eps=get("bert.embeddings.LayerNorm").epsilon,
                            num_labels=get("classifier").units)


def _is_zoo(model: keras.Model) -> bool:
    try:
        zoo_config(model)
    except ValueError:  # get_layer of a missing zoo name raises ValueError too
        return False
    return True


def build_student(model: keras.Model, student: StudentSpec,
                  st: Optional[TransformerStructure] = None) -> tuple[keras.Model, list[int]]:
    """A copy of the model that keeps only some blocks (student block i = teacher block keep[i]).

    A zoo model is rebuilt from its config (contiguous zoo names); any other functional model is cut from its
    structure (`cut_blocks`: the kept layers keep their names). Raises StructureError before any copy when
    the blocks cannot be found."""
    if not _is_zoo(model):
        st = st if st is not None else discover_structure(model)
        blocks = _every_block(model, st)  # refused here, before the core is asked which blocks to keep
        keep = student.layers_to_keep(len(blocks))
        return cut_blocks(model, keep, st), keep
    cfg = zoo_config(model)
    keep = student.layers_to_keep(cfg.num_hidden_layers)  # the core defines the choice once
    small = dataclasses.replace(cfg, num_hidden_layers=len(keep))
    new = build_vit(small) if isinstance(cfg, zvit.ViTConfig) else build_bert(small)
    prefix = "vit.encoder.layer." if isinstance(cfg, zvit.ViTConfig) else "bert.encoder.layer."
    for layer in new.layers:
        name = layer.name
        if name.startswith(prefix):
            i, rest = name[len(prefix):].split(".", 1)
            name = f"{prefix}{keep[int(i)]}.{rest}"
        layer.set_weights(unwrap(model.get_layer(name)).get_weights())
    return new, keep


def _every_block(model: keras.Model, st: Optional[TransformerStructure]) -> list[Block]:
    """Every block of `st` in `model`, or StructureError saying which could not be found."""
    blocks = find_blocks(model, st)
    bad = [b for b in blocks if isinstance(b, str)]
    if not blocks or bad:
        raise StructureError(
            "building a student by dropping layers needs every Transformer block of the model "
            f"({st.summary() if st is not None else 'no Transformer structure found'}): "
            + ("; ".join(bad) or "no block found") + ". Use a functional tf_keras model whose blocks end in a "
            "residual add (+ LayerNormalization), or declare the structure in the recipe")
    return blocks


def cut_blocks(model: keras.Model, keep: list[int], st: Optional[TransformerStructure]) -> keras.Model:
    """The functional model rebuilt without the blocks not in `keep`: each dropped block's output is replaced by
    the residual stream entering it, its layers are left out; the other layers are new layers of the same
    configuration and names with a copy of their weights (constants and Lambda functions kept, as graph.replay)."""
    blocks = _every_block(model, st)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise StructureError(f"keep_layers {keep} does not fit the model's {len(blocks)} block(s)")
    dropped = [b for b in blocks if b.number not in keep]
    skip = set().union(*(b.members for b in dropped)) if dropped else set()
    alias = {id(b.output.output): b.entry for b in dropped}  # a dropped block passes its input on

    def resolve(t: Any) -> Any:
        while id(t) in alias:
            t = alias[id(t)]
        return tensors[id(t)]

    tensors: dict[int, Any] = {}
    for x in model.inputs:
        src = x._keras_history.layer
        tensors[id(x)] = keras.Input(batch_shape=x.shape, dtype=x.dtype, name=src.name)
    made: dict[int, tuple[Any, Any]] = {}
    for node in nodes_in_order(model):
        if node.is_input or id(unwrap(node.layer)) in skip:
            continue
        flat = list(node._flat_arguments)
        for (_, index), kt in zip(node._keras_inputs_ids_and_indices, node.keras_inputs):
            flat[index] = resolve(kt)
        args, kwargs = tf.nest.pack_sequence_as((node.call_args, list(node.call_kwargs.values())), flat)
        kwargs = dict(zip(node.call_kwargs.keys(), kwargs))
        names = node.layer._call_spec.arg_names[1:]  # as graph.replay: the first argument positional
        if args and len(args) - 1 <= len(names):
            kwargs = {**dict(zip(names, args[1:])), **kwargs}
            args = args[:1]
        if id(node.layer) not in made:
            made[id(node.layer)] = (node.layer, clone_layer(node.layer))
        outputs = made[id(node.layer)][1](*args, **kwargs)
        for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
            tensors[id(old)] = new
    inputs = tf.nest.map_structure(lambda t: tensors[id(t)], model._nested_inputs)
    outputs = tf.nest.map_structure(resolve, model._nested_outputs)
    student = keras.Model(inputs, outputs, name=model.name)
    for old, new in made.values():
        new.set_weights(old.get_weights())
    return student


# ---- what the losses look at -------------------------------------------------------------------------

def tapped(model: keras.Model, spec: DistillationSpec, blocks: list[Any]) -> keras.Model:
    """A model sharing `model`'s layers that also returns every tapped block's hidden state and (relation) its
    attention inputs (q, k, v[, bias]) for feature and relation losses."""
    outputs: dict[str, Any] = {"logits": model.output}
    for i, block in enumerate(blocks):
        if isinstance(block, str):  # not tapped: `require_blocks` made sure the layer map does not need it
            continue
        if DistillKind.feature in spec.kinds:
            outputs[f"hidden{i}"] = block.output.output
        if DistillKind.relation in spec.kinds and isinstance(block.attention, ScaledDotProductAttention):
            node_inputs = block.attention.inbound_nodes[0].input_tensors
            for j, t in enumerate(node_inputs):
                outputs[f"att{i}_{j}"] = t
    return keras.Model(model.inputs, outputs)


def _kl(p_log_teacher: tf.Tensor, q_log_student: tf.Tensor, mask: Any = None) -> tf.Tensor:
    """KL(teacher || student) from log-probabilities along the last axis, averaged over the rest; for relations
    [B, heads, L, L] with a mask [B, L], over the heads and the real query rows only (padding rows left out)."""
    kl = tf.reduce_sum(tf.exp(p_log_teacher) * (p_log_teacher - q_log_student), -1)
    if mask is None or len(kl.shape) != 3 or len(mask.shape) != 2:
        return tf.reduce_mean(kl)
    w = tf.broadcast_to(tf.cast(mask, kl.dtype)[:, None, :], tf.shape(kl))
    return tf.reduce_sum(kl * w) / tf.maximum(tf.reduce_sum(w), 1.0)


def _relation_logs(att: ScaledDotProductAttention, q, k, v, bias=None) -> tuple[tf.Tensor, tf.Tensor]:
    """log attention probabilities and log value relations [B, heads, L, L]."""
    d = att.head_dim
    s = tf.matmul(att._split(q), att._split(k), transpose_b=True) / math.sqrt(d)
    vs = att._split(v)
    r = tf.matmul(vs, vs, transpose_b=True) / math.sqrt(d)
    if bias is not None:
        s, r = s + bias, r + bias
    return tf.nn.log_softmax(s, -1), tf.nn.log_softmax(r, -1)


def input_feed(student: keras.Model, teacher: keras.Model) -> keras.Model:
    """A layer-less functional model whose inputs are the student's and the teacher's (under ``teacher_``
    names). Teacher and student with different tokenizers: the data's ``teacher_data`` batches carry the
    teacher's own ids (`unicompress.data.teacher`); the training loop converts each batch to the tensors of
    its model's inputs, so with this as the loop's model the teacher's ids reach the loss too."""
    inputs = {}
    for model, prefix in ((student, ""), (teacher, TEACHER_PREFIX)):
        if not isinstance(model.input, dict):
            raise TypeError("distillation with teacher inputs needs models with named (dict) inputs, such as "
                            "input_ids and attention_mask")
        for name, tensor in model.input.items():
            inputs[prefix + name] = keras.Input(tensor.shape[1:], dtype=tensor.dtype, name=prefix + name)
    return keras.Model(inputs, list(inputs.values()), name="distillation_inputs")


def _token_mean(err: tf.Tensor, mask: Any) -> tf.Tensor:
    """The mean of a per-token error [batch, tokens] over the real tokens (attention_mask 1): padding is no
    part of the loss, as on every backend."""
    if mask is None or len(mask.shape) != 2 or len(err.shape) != 2:
        return tf.reduce_mean(err)
    m = tf.cast(mask, err.dtype)
    return tf.reduce_sum(err * m) / tf.maximum(tf.reduce_sum(m), 1.0)


def apply_distillation(model: Any, spec: DistillationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Train the student (built from `model` when spec.student is set) to imitate ctx.teacher."""
    teacher = ctx.teacher if ctx.teacher is not None else model
    # the blocks come from the structure the stage was planned with (maybe declared in the recipe)
    st = ctx.plan.structure if ctx.plan is not None else discover_structure(model)
    t_st = st if teacher is model else discover_structure(teacher)
    if not (is_graph_model(model) and is_graph_model(teacher)):
        raise TypeError("distillation taps hidden states of functional tf_keras models")
    student = model
    if spec.student is not None:
        student, _ = build_student(model, spec.student, st)
    s_st = st if student is model else discover_structure(student)
    t_blocks, s_blocks = find_blocks(teacher, t_st), find_blocks(student, s_st)
    layer_map: list = []
    if {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
        # the core's default map (or the spec's); without blocks `require_blocks` refuses
        layer_map = spec.resolved_layer_map(len(s_blocks), len(t_blocks)) if s_blocks and t_blocks else []
        relation = DistillKind.relation in spec.kinds
        require_blocks(s_blocks, layer_map, "student", s_st, relation)  # refuse before training, never pair nothing
        require_blocks(t_blocks, layer_map, "teacher", t_st, relation)
        for si, ti in layer_map:  # logged so the conformance suite sees the pairs the losses use
            ctx.log("layer_map", si, ti)
    t_att = [b if isinstance(b, str) else b.attention for b in t_blocks]
    s_att = [b if isinstance(b, str) else b.attention for b in s_blocks]
    t_tap, s_tap = tapped(teacher, spec, t_blocks), tapped(student, spec, s_blocks)
    projections: dict[int, keras.layers.Dense] = {}
    if DistillKind.feature in spec.kinds:
        for si, ti in layer_map:
            sw = int(s_tap.output[f"hidden{si}"].shape[-1])
            tw = int(t_tap.output[f"hidden{ti}"].shape[-1])
            if sw != tw:
                if not spec.projection:
                    raise ValueError(f"hidden widths differ ({sw} vs {tw}) and projection is off")
                projections[si] = keras.layers.Dense(tw, name=f"distill_projection_{si}")
                projections[si].build((None, None, sw))
    T, alpha = spec.temperature, spec.alpha

    def loss_fn(_model, inputs, labels):
        inputs, t_inputs = split_teacher_inputs(inputs)  # the teacher's own token ids when its tokenizer differs
        t_out = t_tap(t_inputs, training=False)
        t_out = {k: tf.stop_gradient(v) for k, v in t_out.items()}
        s_out = s_tap(inputs, training=True)
        task = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, s_out["logits"],
                                                                           from_logits=True))
        distill = tf.constant(0.0)
        if DistillKind.response in spec.kinds:
            distill += T * T * _kl(tf.nn.log_softmax(t_out["logits"] / T), tf.nn.log_softmax(s_out["logits"] / T))
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        pairs = max(len(layer_map), 1)  # the core's meaning: feature and relation terms averaged over the pairs
        for si, ti in layer_map:
            if DistillKind.feature in spec.kinds:
                hs, ht = s_out[f"hidden{si}"], t_out[f"hidden{ti}"]
                if si in projections:
                    hs = projections[si](hs)
                if spec.feature_loss is FeatureLoss.mse:
                    err = tf.reduce_mean(tf.square(hs - ht), -1)
                else:
                    err = 1.0 - tf.reduce_sum(tf.math.l2_normalize(hs, -1) * tf.math.l2_normalize(ht, -1), -1)
                distill += spec.feature_weight * _token_mean(err, mask) / pairs
            if DistillKind.relation in spec.kinds:
                n_t = sum(1 for k in t_out if k.startswith(f"att{ti}_"))
                n_s = sum(1 for k in s_out if k.startswith(f"att{si}_"))
                a_t, v_t = _relation_logs(t_att[ti], *[t_out[f"att{ti}_{j}"] for j in range(n_t)])
                a_s, v_s = _relation_logs(s_att[si], *[s_out[f"att{si}_{j}"] for j in range(n_s)])
                distill += spec.relation_weight * (_kl(a_t, a_s, mask) + _kl(v_t, v_s, mask)) / pairs
        return alpha * distill + (1.0 - alpha) * task

    variables = list(student.trainable_variables)
    for p in projections.values():
        variables += p.trainable_variables
    batches = distillation_data(data)  # with teacher inputs when the tokenizers differ
    feed = input_feed(student, teacher) if batches is not data else student
    train(feed, batches, spec.training, ctx, loss_fn=loss_fn, variables=variables, description="distill")
    return student


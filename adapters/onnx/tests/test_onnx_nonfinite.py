"""NaN/inf weights are refused before any stage on the onnx backend, for every technique it claims, and the input
model is left bit-identical (issue 13, classes 2 and 6: no NaN scales or masks, no LAPACK on inf)."""
from unicompress.conformance.cases import task_data
from unicompress.conformance.hardening import assert_non_finite_refused
from unicompress_onnx.backend import OnnxAdapter

A = OnnxAdapter()


def test_non_finite_weights_are_refused_for_every_claimed_technique():
    checked = assert_non_finite_refused(A, A.build_model("tiny-bert", seed=0), task_data("tiny-bert"))
    assert {c.split(":")[0] for c in checked} >= {"PruningSpec", "QuantizationSpec"}
    assert len(checked) >= 6

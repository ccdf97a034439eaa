"""NaN/inf weights are refused before any stage on the onnx backend, for every technique it claims, and the input
model is left bit-identical (issue 13, classes 2 and 6; the body: unicompress.conformance.hardening)."""
from unicompress.conformance.hardening import non_finite_test
from unicompress_onnx.backend import OnnxAdapter

test_non_finite_weights_are_refused_for_every_claimed_technique = non_finite_test(OnnxAdapter())

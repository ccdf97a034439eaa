"""The adapter's plumbing: lean import, entry point, the Keras 3 guard (subprocesses), capability table."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from unicompress.backend import Support, get_backend

from unicompress_tensorflow.backend import TensorFlowAdapter


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    clean.update({"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", **env})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=clean,
                          timeout=300)


def test_keras3_mode_fails_with_the_fix_in_the_message():
    r = _python("""
        import tensorflow as tf
        print("keras", tf.keras.version())          # resolves tf.keras to Keras 3
        from unicompress_tensorflow import Keras3ModeError
        try:
            import unicompress_tensorflow.models
        except Keras3ModeError as exc:
            print("REFUSED:", exc)
    """)
    assert "keras 3." in r.stdout, r.stderr[-2000:]
    assert "REFUSED:" in r.stdout
    assert "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported" in r.stdout


@pytest.mark.slow
def test_tensorflow_imported_but_keras_untouched_is_switched_to_tf_keras():
    r = _python("""
        import tensorflow as tf
        import unicompress_tensorflow.models as m
        import tf_keras
        print("legacy", tf.keras.Model is tf_keras.Model, type(m.build_model("tiny-bert")).__module__)
    """)
    assert "legacy True tf_keras" in r.stdout, r.stderr[-2000:]


def test_listing_capabilities_imports_no_framework():
    r = _python("""
        import sys
        from unicompress.backend import get_backend
        caps = get_backend("tensorflow").capabilities()
        frameworks = {"tensorflow", "tf_keras", "tensorflow_model_optimization"}
        print(len(list(caps.rows())), sorted(frameworks & set(sys.modules)))
    """)
    count, loaded = r.stdout.split(" ", 1)
    assert int(count) > 20 and loaded.strip() == "[]", r.stderr[-2000:]


def test_entry_point_and_capability_rows():
    adapter = get_backend("tensorflow")
    assert isinstance(adapter, TensorFlowAdapter)
    caps = adapter.capabilities()
    assert caps.support("pruning", "granularity", "n_m") is Support.native
    assert caps.support("pruning", "granularity", "head") is Support.emulated
    assert caps.support("pruning", "scope", "global") is Support.unsupported
    assert caps.support("quantization", "mapping", "log") is Support.emulated
    assert caps.support("quantization", "bits", 4) is Support.native
    assert caps.support("finetune", "training.distributed", "data_parallel") is Support.native  # tf.distribute (test_tensorflow_distributed.py)
    assert caps.support("quantization", "mode", "dynamic") is Support.native  # TFLite, restricted to the selector


def test_is_model_without_importing_and_with_models():
    adapter = TensorFlowAdapter()
    assert not adapter.is_model(object())
    models = pytest.importorskip("unicompress_tensorflow.models")
    assert adapter.is_model(models.build_model("tiny-bert"))

"""unicompress backend for TensorFlow: tf_keras models compressed with the TF Model Optimization Toolkit.

Importing this package imports no framework; the modules that need TensorFlow call
`ensure_legacy_keras()` before importing it, because TFMOT 0.8.1 works only with Keras 2 (tf_keras).
"""
from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

KERAS3_MESSAGE = (
    "TensorFlow was already imported in Keras 3 mode (tf.keras is Keras {version}), but the TensorFlow "
    "Model Optimization Toolkit that unicompress-tensorflow uses works only with Keras 2 (tf_keras). "
    "Fix: set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, e.g. "
    "`export TF_USE_LEGACY_KERAS=1` in the shell or `os.environ['TF_USE_LEGACY_KERAS'] = '1'` as the "
    "first line of your program (before `import tensorflow`), and build models with `import tf_keras`.")


class Keras3ModeError(RuntimeError):
    """TensorFlow routes tf.keras to Keras 3, which TFMOT cannot work with."""


def ensure_legacy_keras() -> None:
    """Make tf.keras mean tf_keras (Keras 2) in this process, or fail saying how to fix it.

    Sets ``TF_USE_LEGACY_KERAS=1`` (read by TensorFlow when tf.keras is first resolved). When TensorFlow
    had already resolved tf.keras to Keras 3, nothing can switch it back: raise `Keras3ModeError`.
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    keras = getattr(tf, "keras", None)
    # KerasLazyLoader records which Keras it resolved to once tf.keras is first touched.
    resolved = getattr(keras, "_tfll_keras_version", None) if keras is not None else None
    if resolved is None and keras is not None:
        version_fn = getattr(keras, "version", None)
        resolved = "keras_3" if callable(version_fn) and str(version_fn()).startswith("3.") else "tf_keras"
    if resolved == "keras_3":
        version_fn = getattr(keras, "version", None)
        raise Keras3ModeError(KERAS3_MESSAGE.format(version=version_fn() if callable(version_fn) else "3"))


from .backend import TensorFlowAdapter  # noqa: E402  (imports no framework)

__all__ = ["TensorFlowAdapter", "ensure_legacy_keras", "Keras3ModeError", "KERAS3_MESSAGE", "__version__"]

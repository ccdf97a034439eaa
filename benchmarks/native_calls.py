"""Each framework's own pruning call made by hand, to measure what unicompress costs on top of it.

The spec is 50% unstructured magnitude pruning, per layer, of the layers unicompress's default selector
picks. Each function below is what a user of that framework would write without unicompress: copy the
model, prune the named layers with the toolkit, make the zeros permanent. bench.py times it against
`unicompress.compress` on the same model and checks that both prune the same weights.

- torch: `torch.nn.utils.prune.l1_unstructured` + `prune.remove` on each layer.
- tensorflow: TFMOT `prune_low_magnitude(ConstantSparsity(0.5, begin_step=0, frequency=1))` around each
  Dense (by `clone_model`), one mask update per wrapper, `strip_pruning`.
- paddle: PaddleSlim's `UnstructuredPruner` cannot be called by hand on Paddle 3 (its float mask becomes
  bool and the forward pass raises a TypeError: unicompress_paddle/compat.py), so the by-hand version is
  Paddle's own ops: the k-th smallest |w| of each weight (`paddle.kthvalue`) and `set_value(w * mask)`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

SPARSITY = 0.5


def torch_by_hand(model: Any, names: Sequence[str]) -> Any:
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for name in names:
        prune.l1_unstructured(modules[name], "weight", amount=SPARSITY)
        prune.remove(modules[name], "weight")
    return pruned


def tensorflow_by_hand(model: Any, names: Sequence[str]) -> Any:
    from unicompress_tensorflow.models import custom_objects  # first: it switches TF to legacy Keras

    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    chosen = set(names)
    schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0, frequency=1)
    with keras.utils.custom_object_scope(custom_objects()):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        wrapped = keras.models.clone_model(clone, clone_function=lambda layer: tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=schedule) if layer.name in chosen else layer)
    for layer in wrapped.layers:
        if hasattr(layer, "pruning_obj"):
            layer.pruning_step.assign(0)
            layer.pruning_obj.conditional_mask_update()
            layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def paddle_by_hand(model: Any, names: Sequence[str]) -> Any:
    import paddle

    pruned = copy.deepcopy(model)
    layers = dict(pruned.named_sublayers())
    with paddle.no_grad():
        for name in names:
            w = layers[name].weight
            k = int(round(SPARSITY * w.size))
            threshold = paddle.kthvalue(paddle.abs(w).flatten(), k)[0]
            w.set_value(w * (paddle.abs(w) > threshold).astype(w.dtype))  # the k smallest |w| become 0
    return pruned


BY_HAND: dict[str, Callable[[Any, Sequence[str]], Any]] = {
    "torch": torch_by_hand, "tensorflow": tensorflow_by_hand, "paddle": paddle_by_hand}

NATIVE_CALL = {"torch": "torch.nn.utils.prune.l1_unstructured",
               "tensorflow": "tfmot prune_low_magnitude + strip_pruning",
               "paddle": "paddle.kthvalue + set_value (PaddleSlim's pruner is broken on Paddle 3)"}

"""The function whose curvature is taken: a Keras model's weights, names and forward pass.

The forward pass runs through `Model.stateless_call` with the weights' current values passed
in as tensors, with BatchNormalization and Dropout in inference mode, so the user's model is
never changed and any subset of its weights can be differentiated.

When the model computes in a lower precision (`mixed_float16`, `mixed_bfloat16`), or when a
cross-entropy must be evaluated on the logits of a model that ends in a softmax, the forward
pass runs on a *twin*: a clone of the model whose layers compute in the variables' dtype and
whose final softmax is removed. The twin has its own variables but never reads them: the
original model's values are passed to it.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Sequence

import keras
import tensorflow as tf

from tfprune.errors import CurvatureError
from tfprune.graph.paths import SEP, iter_layers


class ModelView:
    """Weights, names and a stateless forward pass of a single-output Keras model.

    Args:
        model: a built `keras.Model`, held weakly: keep a reference to it while using the view.
        weights: the variables to differentiate (a subset of `model.trainable_weights`, by
            identity), or None for all of them.
        strip_softmax: return the logits of a model that ends in a softmax (functional and
            Sequential models; `self.logits` says whether that happened).

    Raises:
        CurvatureError: not a built Keras model, several outputs, no trainable weights, or
            weights that are not trainable weights of the model.
    """

    def __init__(self, model, weights: Optional[Sequence] = None, strip_softmax: bool = False):
        if not isinstance(model, keras.Model):
            raise CurvatureError(f"model must be a keras.Model; received {type(model).__name__}")
        if not model.built:
            raise CurvatureError(f"model {model.name!r} is not built: call it on data or build it "
                                 "before computing curvature")
        outputs = getattr(model, "outputs", None)
        if outputs is not None and len(tf.nest.flatten(outputs)) != 1:
            raise CurvatureError(f"model {model.name!r} has {len(tf.nest.flatten(outputs))} "
                                 "outputs; curvature supports single-output models")
        trainable = list(model.trainable_variables)
        if not trainable:
            raise CurvatureError(f"model {model.name!r} has no trainable weights")
        position = {id(v): i for i, v in enumerate(trainable)}
        if weights is None:
            weights = trainable
        else:
            weights = list(weights)
            if not weights:
                raise CurvatureError("weights is empty; pass None for all trainable weights")
            for w in weights:
                if id(w) not in position:
                    raise CurvatureError(
                        f"weights must be trainable weights of model {model.name!r}; "
                        f"{getattr(w, 'path', repr(w))!r} is not one of them")
            if len({id(w) for w in weights}) != len(weights):
                raise CurvatureError("weights lists a variable twice")
        self.model_name = model.name
        self.weights: List = weights
        self.indices = [position[id(w)] for w in weights]
        self._trainable = trainable
        self._non_trainable = list(model.non_trainable_variables)
        dtypes = {v.dtype for v in weights}
        self.dtype = tf.float64 if dtypes == {"float64"} else tf.float32
        self.layer_paths, self.names = _weight_names(model, weights)
        self.input_ranks = _input_ranks(model)
        softmax_layer = _final_softmax(model) if strip_softmax else None
        self.logits = softmax_layer is not None
        # The model itself is held weakly so that cached views do not keep it alive.
        self._model = weakref.ref(model)
        self._twin = None
        if softmax_layer is not None or _computes_below(model, self.dtype):
            self._twin = _twin(model, self.dtype, softmax_layer)

    def read(self):
        """Current values `(trainable, non_trainable)` in the order `call` expects."""
        return ([self._lift(v) for v in self._trainable],
                [self._lift(v) for v in self._non_trainable])

    def _lift(self, variable):
        value = tf.convert_to_tensor(variable)
        if value.dtype.is_floating and value.dtype.size < self.dtype.size:
            return tf.cast(value, self.dtype)
        return value

    def forward_model(self):
        """The model the forward pass runs on, holding the model's current values.

        The model itself, or its twin (mixed precision, or softmax logits) with every variable
        set to the model's current value, for code that needs the forward pass's intermediate
        tensors (a functional model built on the returned model's layers).
        """
        model = self._model()
        if model is None:
            raise CurvatureError(f"model {self.model_name!r} no longer exists")
        if self._twin is None:
            return model
        mine = list(model.trainable_variables) + list(model.non_trainable_variables)
        theirs = list(self._twin.trainable_variables) + list(self._twin.non_trainable_variables)
        for source, target in zip(mine, theirs):
            target.assign(self._lift(source))
        return self._twin

    def call(self, trainable, non_trainable, x):
        """The model's output (logits when `self.logits`) for values of all its variables."""
        model = self._twin if self._twin is not None else self._model()
        if model is None:
            raise CurvatureError(f"model {self.model_name!r} no longer exists")
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return tf.nest.flatten(outputs)[0]


def _weight_names(model, weights):
    """`(layer_paths, names)`: the path of the layer owning each weight, and `path/var.name`."""
    owner = {}
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model):
            continue  # its own layers come next and claim its weights
        for v in layer.weights:
            owner.setdefault(id(v), path)
    paths = [owner.get(id(w), w.path.rsplit("/", 1)[0]) for w in weights]
    return paths, [f"{p}{SEP}{w.name}" for p, w in zip(paths, weights)]


def _input_ranks(model):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    return [len(t.shape) for t in tf.nest.flatten(inputs)]


def _computes_below(model, dtype) -> bool:
    """Whether any layer computes in a lower precision than `dtype` (mixed precision)."""
    for _, layer in iter_layers(model):
        compute = getattr(layer, "compute_dtype", None)
        if compute in ("float16", "bfloat16") or (compute == "float32" and dtype == tf.float64):
            return True
    return False


def _final_softmax(model):
    """The layer whose softmax produces the model's output, or None (also for subclassed)."""
    outputs = getattr(model, "outputs", None)
    if not outputs or not hasattr(model, "layers"):
        return None
    output = tf.nest.flatten(outputs)[0]
    for layer in reversed(model.layers):
        try:
            produced = layer.output
        except (AttributeError, ValueError):
            continue
        if produced is not output:
            continue
        if isinstance(layer, keras.Model):
            return _final_softmax(layer)
        if isinstance(layer, keras.layers.Softmax) and layer.axis in (-1, [-1]):
            return layer
        if getattr(layer, "activation", None) is keras.activations.softmax:
            return layer
        return None
    return None


class _PassLogits(keras.layers.Layer):
    """Identity in place of a final Softmax layer (which is called with a `mask` argument)."""

    def call(self, inputs, mask=None):
        return inputs


def _twin(model, dtype, softmax_layer):
    """A clone of `model` that computes in `dtype` and, if given, without `softmax_layer`'s softmax."""
    name = tf.as_dtype(dtype).name

    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = name
        if layer is softmax_layer:
            if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
                return _PassLogits(name=layer.name, dtype=name)
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    if getattr(model, "inputs", None) is None:
        raise CurvatureError(
            f"model {model.name!r} computes in a lower precision than its weights (or ends in a "
            "softmax) and is not a functional or Sequential model, so it cannot be evaluated in "
            f"{name}: use a functional model or a float32 dtype policy")
    try:
        twin = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except Exception as e:  # noqa: BLE001  (any layer may fail to rebuild from its config)
        raise CurvatureError(f"model {model.name!r} cannot be cloned to compute in {name} "
                             f"(needed for mixed precision or softmax logits): {e}") from e
    mine = list(model.trainable_variables) + list(model.non_trainable_variables)
    theirs = list(twin.trainable_variables) + list(twin.non_trainable_variables)
    if len(mine) != len(theirs) or any(tuple(a.shape) != tuple(b.shape) or a.name != b.name
                                       for a, b in zip(mine, theirs)):
        raise CurvatureError(f"the {name} clone of model {model.name!r} does not have the same "
                             f"variables in the same order; cannot evaluate it in {name}")
    return twin

"""`PruningWrapper` and `prunable()`: masks that live in the layers and travel in `.keras` files."""

from __future__ import annotations

import keras

from tfprune.errors import UnsupportedModelError
from tfprune.graph.paths import find_layer, iter_layers


@keras.saving.register_keras_serializable(package="tfprune")
class PruningWrapper(keras.layers.Wrapper):
    """Runs a layer with every weight multiplied by a mask held in the wrapper.

    Each variable of the wrapped layer gets a non-trainable mask of its shape (all ones until a
    pruning callback changes it). `call` runs the layer inside a `keras.StatelessScope` in
    which each trainable weight reads as `weight * mask`, so a masked entry contributes nothing
    to the output and its gradient is exactly zero; updates the layer makes to its own state
    (BatchNormalization statistics) are written back. Masks are weights of the wrapper, so they
    are saved and restored with the model. The wrapper takes the name of the layer it wraps,
    so layer paths (and channel groups) are the same as in the unwrapped model. A pruning
    callback records its target in `pruning_target` (a `tfprune.Target` config), which is
    saved with the model: a resumed run is checked against it.

    Args:
        layer: the layer to wrap (built or not).
        pruning_target: the target config of the pruning run that drives the masks, or None
            (set by the pruning callbacks; rarely given by hand).
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    ```python
    import keras, tfprune
    dense = tfprune.PruningWrapper(keras.layers.Dense(4))
    y = dense(keras.ops.ones((2, 3)))
    [m.shape for _, m in dense.masked_weights()]    # [(3, 4), (4,)]
    ```
    """

    def __init__(self, layer, pruning_target=None, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self._masks = []
        self.pruning_target = dict(pruning_target) if pruning_target is not None else None

    def build(self, input_shape=None):
        super().build(input_shape)
        self._masks = [self.add_weight(name=f"{v.name}_mask", shape=v.shape, dtype=v.dtype,
                                       initializer="ones", trainable=False)
                       for v in self.layer.weights]
        self.built = True

    def masked_weights(self):
        """`[(weight, mask), ...]` for every weight of the wrapped layer."""
        return list(zip(self.layer.weights, self._masks))

    def call(self, inputs, *args, **kwargs):
        mapping = [(v, v.value * m.value) for v, m in self.masked_weights() if v.trainable]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs, *args, **kwargs)
        masked = {id(v) for v, _ in mapping}
        for v in self.layer.variables:
            if id(v) not in masked:
                value = scope.get_current_value(v)
                if value is not None:
                    v.assign(value)
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def get_config(self):
        config = super().get_config()
        if self.pruning_target is not None:
            config["pruning_target"] = dict(self.pruning_target)
        return config


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _single_input(layer) -> bool:
    try:
        return not isinstance(layer.input, (list, tuple, dict))
    except (AttributeError, ValueError):  # a layer called at several places has no one input
        return False


def _clone_with_weights(model, clone_function, copy_weights):
    try:
        clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    except ValueError as e:  # Keras refuses subclassed models here
        raise UnsupportedModelError(
            f"{type(model).__name__} {getattr(model, 'name', '')!r}: only functional and "
            f"Sequential models (nested ones included) can be wrapped or unwrapped ({e})") from e
    for path, layer in iter_layers(model):
        if not isinstance(layer, keras.Model) and layer.weights:
            copy_weights(layer, find_layer(clone, path))
    return clone


def prunable(model) -> keras.Model:
    """A copy of `model` whose layers with weights are wrapped in `PruningWrapper`s.

    Every layer that has weights and one input is wrapped (nested models are descended), so
    pruning callbacks keep their masks in the layers: the forward pass and the gradients are
    masked exactly at every step, and masks are saved in `.keras` files (load them with
    `tfprune` imported). `model` is not changed; the copy is not compiled (compile it like the
    original). `tfprune.strip` turns the trained copy back into a plain, smaller model.

    Args:
        model: a built functional or Sequential Keras model.

    Returns:
        A new `keras.Model` with the same layer names, weights and outputs.

    Raises:
        UnsupportedModelError: a subclassed model.

    Example:

    ```python
    import tfprune
    model = tfprune.prunable(tfprune.zoo.small_cnn())
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[tfprune.MagnitudePruning(tfprune.Target(flops=0.5))])
    small = tfprune.strip(model)
    ```
    """
    def wrap(layer):
        if layer.weights and not isinstance(layer, (keras.Model, PruningWrapper)) \
                and _single_input(layer):
            return PruningWrapper(_clone(layer))
        return _clone(layer)

    def copy(layer, new):
        target = new.layer if isinstance(new, PruningWrapper) else new
        target.set_weights(layer.get_weights())

    return _clone_with_weights(model, wrap, copy)


def is_wrapped(model) -> bool:
    """Whether any layer of `model` (nested models included) is a `PruningWrapper`."""
    return any(isinstance(layer, PruningWrapper) for _, layer in iter_layers(model))


def saved_target(model):
    """The `tfprune.Target` a pruning run recorded in the wrappers of `model`, or None.

    Example:

    ```python
    import tfprune
    model = tfprune.prunable(tfprune.zoo.small_cnn())
    tfprune.keras.saved_target(model)     # None: no pruning run has driven it yet
    ```
    """
    from tfprune.keras.targets import Target

    for _, layer in iter_layers(model):
        if isinstance(layer, PruningWrapper) and layer.pruning_target is not None:
            return Target.from_config(layer.pruning_target)
    return None


def record_target(model, target) -> None:
    """Writes `target`'s config into every `PruningWrapper` of `model` (saved with it)."""
    for _, layer in iter_layers(model):
        if isinstance(layer, PruningWrapper):
            layer.pruning_target = target.get_config()


def unwrap(model) -> keras.Model:
    """A plain copy of `model`: each `PruningWrapper` replaced by its layer, weights x masks."""
    def plain(layer):
        return _clone(layer.layer if isinstance(layer, PruningWrapper) else layer)

    def copy(layer, new):
        if isinstance(layer, PruningWrapper):
            new.set_weights([v.numpy() * m.numpy() for v, m in layer.masked_weights()])
        else:
            new.set_weights(layer.get_weights())

    return _clone_with_weights(model, plain, copy)

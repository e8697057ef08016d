"""Find layers and variables of a (possibly nested) Keras model by path.

Layer paths join layer names with `/` through nested models: `"block1/conv"` is the layer
`conv` of the nested model `block1`. Variables are named by `(layer_path, variable.name)`
because Keras 3 `variable.path` does not include the names of enclosing models.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import keras

from tfprune.errors import UnknownGroupError  # noqa: F401  (re-exported for convenience)

SEP = "/"


def _sublayers(model):
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def iter_layers(model, prefix: str = "") -> Iterator[Tuple[str, "keras.layers.Layer"]]:
    """Yields `(path, layer)` for every layer, descending into nested models.

    Nested models are yielded themselves too (before their layers).
    """
    for layer in _sublayers(model):
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, path + SEP)


def find_layer(model, path: str):
    """The layer at `path` (`"outer/inner"` for layers of nested models)."""
    node = model
    for name in path.split(SEP):
        if not isinstance(node, keras.Model):
            raise KeyError(f"layer path {path!r}: {node.name!r} is not a model")
        try:
            node = node.get_layer(name)
        except ValueError:
            raise KeyError(f"no layer {name!r} on the path {path!r} of model {model.name!r}") from None
    return node


def find_variable(model, layer_path: str, weight: str):
    """The variable named `weight` (`variable.name`) of the layer at `layer_path`."""
    layer = find_layer(model, layer_path)
    for v in layer.weights:
        if v.name == weight:
            return v
    names = [v.name for v in layer.weights]
    raise KeyError(f"layer {layer_path!r} has no variable {weight!r}; it has {names}")

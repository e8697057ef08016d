"""Rebuilds a model from its config with some channels gone (shrink) or zeroed (mask)."""

from __future__ import annotations

import keras
import numpy as np

from tfprune.errors import UnsupportedModelError
from tfprune.graph._keras_graph import is_rebuildable
from tfprune.graph.paths import SEP, iter_layers


def _entries(config):
    """(name, entry) of every layer entry of a functional or Sequential model config."""
    for entry in config["layers"]:
        yield entry.get("name", entry["config"].get("name")), entry


def _patch(config, prefix, edits, input_shapes, nested):
    """Applies config edits in place, descending into the configs of nested models.

    Build configs are dropped: they hold the old input shapes, and layers are built again
    when the model is called on its inputs anyway.
    """
    for name, entry in _entries(config):
        path = prefix + name
        entry.pop("build_config", None)
        entry.pop("compile_config", None)
        if path in edits:
            entry["config"].update(edits[path](entry["config"]))
        if path in nested:
            _patch(entry["config"], path + SEP, edits, input_shapes, nested)
        if entry["class_name"] == "InputLayer" and (prefix, name) in input_shapes:
            shape = input_shapes[(prefix, name)]
            entry["config"]["batch_shape"] = shape
            if "build_input_shape" in config:     # a Sequential model's own input
                config["build_input_shape"] = shape


def _new_shape(graph, key, keep):
    t = graph.tensors[key]
    shape = list(t.shape)
    if t.ids is not None:
        shape[t.axis] = int(np.count_nonzero(keep(t.ids)))
    return shape


def rebuild(graph, removed_flags, zero: bool) -> keras.Model:
    """A new model like `graph.model` without the channels flagged in `removed_flags`.

    Args:
        graph: the `ChannelGraph` of the model.
        removed_flags: bool array over channel ids (see `removed_classes`).
        zero: if True, keep the architecture and zero the removed channels' weight entries
            (mask); if False, remove them (shrink).
    """
    model = graph.model
    if not is_rebuildable(model):
        raise UnsupportedModelError(
            f"model {model.name!r} ({type(model).__name__}) subclasses keras.Model with its "
            "own constructor, so it cannot be rebuilt from its config; build it with "
            "keras.Model(inputs, outputs) or keras.Sequential")
    roots = graph.roots

    def keep(ids):
        return ~removed_flags[roots[ids]]

    config = model.get_config()
    nested = {n.path for n in graph.trace.nested}
    edits, input_shapes = {}, {}
    if not zero:
        for rec in graph.layers.values():
            if rec.edit is not None:
                edits[rec.path] = lambda cfg, edit=rec.edit: edit(cfg, keep)
        for n in graph.trace.nested:
            for input_name, key in n.inputs:
                input_shapes[(n.path + SEP, input_name)] = _new_shape(graph, key, keep)
    _patch(config, "", edits, input_shapes, nested)

    # Custom layers need not be registered: their classes are taken from the model itself.
    custom = {type(layer).__name__: type(layer) for _, layer in iter_layers(model)
              if not type(layer).__module__.startswith("keras.")}
    with keras.saving.CustomObjectScope(custom):
        new = type(model).from_config(config)

    new_layers = dict(iter_layers(new))
    for path, layer in iter_layers(model):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        values = layer.get_weights()
        rec = graph.layers.get(id(layer))
        if rec is not None:
            names = [v.name for v in layer.weights]
            for (weight, axis), ids in rec.params.items():
                i = names.index(weight)
                mask = keep(ids)
                if zero:
                    index = [slice(None)] * values[i].ndim
                    index[axis] = ~mask
                    values[i] = np.array(values[i], copy=True)
                    values[i][tuple(index)] = 0
                else:
                    values[i] = np.compress(mask, values[i], axis=axis)
        target = new_layers[path]
        target.set_weights(values)
        if isinstance(target, keras.layers.Normalization):
            target.finalize_state()     # it caches its statistics outside its variables
    return new

"""Reads the call graph of a functional or Sequential Keras model, nested models included.

Keras 3 has no public API for the nodes of a model's graph, so this module is the one place
that reads them (`Function._nodes_by_depth`, `Node.arguments`, `KerasTensor._keras_history`,
`Sequential._functional`): a Keras upgrade that moves them touches only this file.

`trace(model)` flattens nested models into one list of `Call`s in topological order. Tensors
are named by keys; the tensors that cross a nested model's boundary are aliased so that a
nested model's input *is* the outer tensor it was called on.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import keras
from keras.src.models.functional import Functional, functional_like_constructor

from tfprune.errors import UnsupportedModelError
from tfprune.graph.paths import SEP

SUPPORTED = ("functional models (`keras.Model(inputs, outputs)`), Sequential models, and "
             "such models nested in each other")


@dataclasses.dataclass
class Call:
    """One call of an operation (a layer or a Keras op used directly) in the flattened graph."""

    op: object
    path: str              # layer path ("outer/inner"); for ops, the op's name in its model
    inputs: List[tuple]    # tensor keys, in the order of the call's flattened arguments
    outputs: List[tuple]
    args: tuple            # the call's arguments (KerasTensors inside), for ops' constants
    kwargs: dict

    @property
    def is_layer(self) -> bool:
        return isinstance(self.op, keras.layers.Layer)

    @property
    def class_name(self) -> str:
        return type(self.op).__name__

    def describe(self) -> str:
        kind = "layer" if self.is_layer else "Keras operation"
        return f"{kind} {self.path!r} ({self.class_name})"


@dataclasses.dataclass
class NestedModel:
    """A model nested in the traced one: where it is and which tensors its inputs are."""

    path: str
    model: keras.Model
    inputs: List[Tuple[str, tuple]]   # (name of its InputLayer, key of the tensor bound to it)


@dataclasses.dataclass
class Trace:
    calls: List[Call]
    shapes: Dict[tuple, tuple]               # tensor key -> shape (batch axis included)
    inputs: List[Tuple[str, tuple]]          # model inputs: (name, key)
    outputs: List[Tuple[str, int, tuple]]    # model outputs: (producing layer name, index, key)
    nested: List[NestedModel]


def graph_function(model):
    """The Functional object holding `model`'s graph, or None for a model without one."""
    if isinstance(model, keras.Sequential):
        return model._functional
    if isinstance(model, Functional):
        return model
    return None


def is_rebuildable(model) -> bool:
    """Whether `type(model).from_config(model.get_config())` rebuilds the same graph."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, Functional) and functional_like_constructor(type(model)))


def check_model(model):
    """Raises `UnsupportedModelError` unless `model` is a model whose graph can be read."""
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"expected a keras.Model, got {type(model).__name__}; tfprune supports {SUPPORTED}")
    if graph_function(model) is None:
        if isinstance(model, keras.Sequential):
            raise UnsupportedModelError(
                f"Sequential model {model.name!r} is not built: start it with keras.Input(shape) "
                "or call model.build(input_shape) first")
        raise UnsupportedModelError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}) whose "
            f"layer graph cannot be traced; tfprune supports {SUPPORTED}")


def _key(scope, tensor):
    return scope + (id(tensor),)


def trace(model) -> Trace:
    """Flattens `model` (functional or Sequential, nested models included) into calls."""
    check_model(model)
    calls: List[Call] = []
    shapes: Dict[tuple, tuple] = {}
    alias: Dict[tuple, tuple] = {}
    nested: List[NestedModel] = []

    def resolve(key):
        while key in alias:
            key = alias[key]
        return key

    def walk(fn, scope, prefix):
        for depth in sorted(fn._nodes_by_depth, reverse=True):
            for node in fn._nodes_by_depth[depth]:
                if node.is_input or node.operation is None:
                    continue
                op = node.operation
                path = prefix + op.name
                in_keys = [resolve(_key(scope, t)) for t in node.input_tensors]
                out_keys = [_key(scope, t) for t in node.outputs]
                for k, t in zip(out_keys, node.outputs):
                    shapes[k] = tuple(t.shape)
                inner = graph_function(op) if isinstance(op, keras.Model) else None
                if inner is not None and len(inner.inputs) == len(in_keys):
                    # A nested model: its inputs are the outer tensors, its outputs alias ours.
                    inner_scope = scope + (len(calls), id(node))
                    bound = []
                    for t, k in zip(inner.inputs, in_keys):
                        alias[_key(inner_scope, t)] = k
                        bound.append((t._keras_history.operation.name, k))
                    nested.append(NestedModel(path, op, bound))
                    walk(inner, inner_scope, path + SEP)
                    for k, t in zip(out_keys, inner.outputs):
                        alias[k] = resolve(_key(inner_scope, t))
                    continue
                calls.append(Call(op, path, in_keys, out_keys, node.arguments.args,
                                  node.arguments.kwargs))

    fn = graph_function(model)
    for t in fn.inputs:
        shapes[_key((), t)] = tuple(t.shape)
    walk(fn, (), "")
    inputs = [(t._keras_history.operation.name, _key((), t)) for t in fn.inputs]
    outputs = [(t._keras_history.operation.name, i, resolve(_key((), t)))
               for i, t in enumerate(fn.outputs)]
    return Trace(calls, shapes, inputs, outputs, nested)


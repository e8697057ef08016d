"""`profile(model)`: FLOPs, MACs, params and weight bytes of a Keras model, per layer."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Tuple

from tfprune.errors import ProfileError
from tfprune.profile.counting import count_layers, itemsize, variable_costs

_UNITS = ((10 ** 12, "T"), (10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "K"))


def _short(n: int) -> str:
    for scale, unit in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """One row of a `Profile`: a layer that is not itself a model.

    Attributes:
        path: layer path; layers of nested models are written `"outer/inner"`.
        class_name: the layer's class, e.g. `"Conv2D"`.
        output_shape: output shape of its first call (batch axis = the profile's batch size);
            a tuple of shapes for a layer with several outputs.
        calls: how many times the layer runs per model call (2 for a layer shared by two call
            sites or inside a nested model called twice).
        params: entries of the layer's weights (trainable and not).
        trainable_params: entries of its trainable weights.
        macs: multiply-accumulates of all its calls (0 for layers that do none by convention).
        weight_bytes: bytes of its weights in their dtypes.
        counted: False when the layer has weights but its compute is not counted (a class the
            convention does not cover, e.g. `LSTM` or a custom layer): its MACs read 0.
    """

    path: str
    class_name: str
    output_shape: tuple
    calls: int
    params: int
    trainable_params: int
    macs: int
    weight_bytes: int
    counted: bool = True

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["output_shape"] = _listify(self.output_shape)
        d["flops"] = self.flops
        return d


def _listify(shape):
    return [_listify(s) for s in shape] if isinstance(shape, tuple) else shape


@dataclasses.dataclass(frozen=True)
class Profile:
    """FLOPs, MACs, params and weight bytes of a model, in total and per layer.

    Counting convention: MACs of convolution (all kinds, grouped, transposed, depthwise,
    separable) and dense layers (`Dense` on any rank, `EinsumDense`) only; bias adds,
    normalization, activations, pooling and elementwise ops count zero; `flops = 2 * macs`.
    See `docs/concepts/profile.md`.

    Attributes:
        model_name: name of the profiled model.
        batch_size: the batch the MACs and FLOPs are counted for.
        macs, flops: totals (`flops = 2 * macs`).
        params: every weight entry, trainable or not, each variable once
            (`model.count_params()`).
        trainable_params: entries of the trainable weights.
        weight_bytes: bytes of all weights in their dtypes (each variable once).
        layers: one `LayerProfile` per layer, nested models' layers included, in layer order.

    `print(profile)` shows the table; `to_dict()` gives a JSON-serialisable dict.
    """

    model_name: str
    batch_size: int
    macs: int
    params: int
    trainable_params: int
    weight_bytes: int
    layers: Tuple[LayerProfile, ...]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def uncounted(self) -> Tuple[str, ...]:
        """Paths of layers with weights whose compute is missing from the totals."""
        return tuple(row.path for row in self.layers if not row.counted)

    def layer(self, path: str) -> LayerProfile:
        """The row of the layer at `path`."""
        for row in self.layers:
            if row.path == path:
                return row
        raise KeyError(f"no layer {path!r} in the profile of {self.model_name!r}; layers are "
                       f"{[row.path for row in self.layers][:8]}...")

    def to_dict(self) -> dict:
        return {"model": self.model_name, "batch_size": self.batch_size, "flops": self.flops,
                "macs": self.macs, "params": self.params,
                "trainable_params": self.trainable_params,
                "non_trainable_params": self.non_trainable_params,
                "weight_bytes": self.weight_bytes, "uncounted": list(self.uncounted),
                "layers": [row.to_dict() for row in self.layers]}

    def __str__(self) -> str:
        head = ("layer", "class", "output shape", "params", "MACs", "FLOPs", "weight bytes")
        rows = [head]
        for r in self.layers:
            shape = str(r.output_shape) + (f" x{r.calls}" if r.calls > 1 else "")
            macs = f"{r.macs:,}" if r.counted else "not counted"
            rows.append((r.path, r.class_name, shape, f"{r.params:,}", macs,
                         f"{r.flops:,}" if r.counted else "-", f"{r.weight_bytes:,}"))
        total = ("total", "", "", f"{self.params:,}", f"{self.macs:,}", f"{self.flops:,}",
                 f"{self.weight_bytes:,}")
        widths = [max(len(row[i]) for row in rows + [total]) for i in range(len(head))]

        def line(row):
            cells = [row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i])
                     for i in range(len(row))]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(head))
        out = [f'Profile of "{self.model_name}" (batch {self.batch_size}; MACs of convolution '
               "and dense layers, FLOPs = 2 x MACs)", rule, line(head), rule]
        out += [line(row) for row in rows[1:]]
        out += [rule, line(total), rule,
                f"FLOPs {_short(self.flops)}, MACs {_short(self.macs)}, params "
                f"{_short(self.params)} ({self.trainable_params:,} trainable, "
                f"{self.non_trainable_params:,} non-trainable), weights "
                f"{_short(self.weight_bytes)}B"]
        if self.uncounted:
            out.append("compute not counted (layer class outside the convention): "
                       + ", ".join(self.uncounted))
        return "\n".join(out)


def _shape_with_batch(shapes, batch_size) -> tuple:
    fixed = tuple(tuple([batch_size] + list(s[1:])) if s else s for s in shapes)
    return fixed[0] if len(fixed) == 1 else fixed


def profile(model, batch_size: int = 1) -> Profile:
    """Counts the FLOPs, MACs, params and weight bytes of a Keras model, per layer.

    Only convolution and dense layers count MACs (bias adds, normalization, activations,
    pooling and elementwise ops count zero) and `flops = 2 * macs`, the convention of the
    published counts (ResNet-50 3.8 G MACs, MobileNetV2 300 M); see
    `docs/concepts/profile.md`. `params` and `weight_bytes` count every weight variable once,
    trainable or not, as `model.count_params()` does. The model is not changed.

    Args:
        model: a built functional or Sequential Keras model; nested models are counted
            layer by layer (paths `"outer/inner"`), once per call.
        batch_size: number of samples the MACs and FLOPs are counted for (params and bytes do
            not depend on it).

    Returns:
        A `Profile`: totals, one `LayerProfile` per layer, `print`-able as a table.

    Raises:
        UnsupportedModelError: `model` is not a built functional or Sequential Keras model.
        ProfileError: `batch_size` is not a positive integer, or a convolution or dense layer
            has undefined spatial/leading dimensions (give the model a fixed input shape).

    Example:

    ```python
    import keras, tfprune
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    p = tfprune.profile(model)
    print(p)               # table per layer
    p.macs, p.flops        # 30*30*3*3*3*8 + 7200*10 = 266,400 MACs, 532,800 FLOPs
    ```
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ProfileError(f"batch_size must be a positive integer; got {batch_size!r}")
    batch_size = int(batch_size)
    counts = count_layers(model, batch_size)
    variables = variable_costs(counts)
    rows = []
    for c in counts:
        weights = c.layer.weights
        rows.append(LayerProfile(
            path=c.path, class_name=type(c.layer).__name__,
            output_shape=_shape_with_batch(c.output_shapes, batch_size), calls=c.calls,
            params=sum(math.prod(v.shape) for v in weights),
            trainable_params=sum(math.prod(v.shape) for v in weights if v.trainable),
            macs=sum(math.prod(v.shape) * c.positions.get(id(v), 0) for v in weights),
            weight_bytes=sum(math.prod(v.shape) * itemsize(v) for v in weights), counted=c.counted))
    return Profile(
        model_name=model.name, batch_size=batch_size,
        macs=sum(v.size * v.positions for v in variables),
        params=sum(v.size for v in variables),
        trainable_params=sum(v.size for v in variables if v.trainable),
        weight_bytes=sum(v.size * v.itemsize for v in variables), layers=tuple(rows))

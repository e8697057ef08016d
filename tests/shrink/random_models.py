"""Seeded random architectures for the shrink fuzzer.

`random_model(seed)` chains random blocks: convolutions (plain, strided, depthwise with
multipliers, separable, transposed, grouped), normalizations, activations, residual merges,
concatenations, squeeze-excitation gates (convolutional and dense, the latter broadcast from
rank 2), pooling/padding/cropping/upsampling, Keras ops, blocks wrapped in nested functional or
Sequential models, and heads that flatten, reshape or pool.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


class _Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def width(self):
        return int(self.rng.integers(2, 9))

    def activation(self, x):
        kind = self.pick(["relu", "swish", "leaky", "prelu", "elu", "op", "none"])
        if kind == "leaky":
            return layers.LeakyReLU(0.1)(x)
        if kind == "prelu":
            return layers.PReLU(shared_axes=[1, 2])(x)
        if kind == "elu":
            return layers.ELU()(x)
        if kind == "op":
            return ops.relu(x) * 0.5
        if kind == "none":
            return x
        return layers.Activation(kind)(x)

    def norm(self, x):
        c = x.shape[-1]
        kind = self.pick(["bn", "bn", "gn", "none"])
        if kind == "bn":
            return layers.BatchNormalization()(x)
        if kind == "gn":
            divisors = [g for g in range(1, c + 1) if c % g == 0]
            return layers.GroupNormalization(groups=self.pick(divisors))(x)
        return x

    def conv(self, x, filters=None, strides=1):
        filters = filters or self.width()
        kind = self.pick(["conv", "conv", "separable", "transpose"]) if strides == 1 else "conv"
        if kind == "separable":
            x = layers.SeparableConv2D(filters, 3, padding="same",
                                       depth_multiplier=int(self.rng.integers(1, 3)))(x)
        elif kind == "transpose":
            x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
        else:
            x = layers.Conv2D(filters, self.pick([1, 3]), strides=strides, padding="same")(x)
        return self.activation(self.norm(x))

    # --- blocks: each maps a tensor to a tensor -----------------------------------------

    def chain(self, x):
        strides = 2 if x.shape[1] >= 6 and self.rng.random() < 0.3 else 1
        return self.conv(x, strides=strides)

    def residual(self, x):
        c = x.shape[-1]
        y = self.conv(x, c)
        if self.rng.random() < 0.5:
            y = self.conv(y, c)
        merge = self.pick([layers.Add(), layers.Subtract(), layers.Average(), layers.Maximum(),
                           layers.Multiply(), "op"])
        return ops.add(x, y) if merge == "op" else merge([x, y])

    def projected_residual(self, x):
        filters = self.width()
        y = self.conv(x, filters)
        shortcut = layers.Conv2D(filters, 1)(x)
        return layers.Add()([shortcut, y])

    def concat(self, x):
        branches = [self.conv(x) for _ in range(int(self.rng.integers(1, 3)))]
        if self.rng.random() < 0.5:
            branches.append(x)                      # dense connectivity
        if len(branches) == 1:
            branches.append(layers.DepthwiseConv2D(3, padding="same")(x))
        return layers.Concatenate()(branches)

    def depthwise(self, x):
        x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=int(self.rng.integers(1, 3)))(x)
        return self.activation(self.norm(x))

    def squeeze_excite(self, x):
        c = x.shape[-1]
        s = layers.GlobalAveragePooling2D()(x)
        if self.rng.random() < 0.5:
            s = layers.Reshape((1, 1, c))(s)
            s = layers.Conv2D(max(1, c // 2), 1, activation="relu")(s)
            s = layers.Conv2D(c, 1, activation="sigmoid")(s)
        else:
            s = layers.Dense(max(1, c // 2), activation="relu")(s)
            s = layers.Dense(c, activation="hard_sigmoid")(s)   # (N, C): broadcast from rank 2
        return layers.Multiply()([x, s])

    def spatial(self, x):
        size = x.shape[1]
        options = [layers.ZeroPadding2D(1), layers.Dropout(0.2), layers.SpatialDropout2D(0.2),
                   layers.Identity()]
        if size >= 4:
            options += [layers.MaxPooling2D(2), layers.AveragePooling2D(2, padding="same")]
        if size >= 5:
            options.append(layers.Cropping2D(((1, 0), (0, 1))))
        if size <= 6:
            options.append(layers.UpSampling2D(2))
        return self.pick(options)(x)

    def rescale(self, x):
        c = x.shape[-1]
        scale = [float(v) for v in self.rng.uniform(0.5, 2.0, c)]
        return layers.Rescaling(scale, offset=float(self.rng.uniform(-0.5, 0.5)))(x)

    def grouped(self, x):
        c = x.shape[-1]
        if c % 2:
            return self.chain(x)
        return layers.Conv2D(c, 1, groups=2)(x)

    def nested(self, x):
        inner = self.pick([self.chain, self.residual, self.concat, self.squeeze_excite])
        if inner is self.chain and self.rng.random() < 0.5:
            c = self.width()
            return keras.Sequential([keras.Input(x.shape[1:]), layers.Conv2D(c, 3, padding="same"),
                                     layers.BatchNormalization(), layers.ReLU()])(x)
        sub_input = keras.Input(x.shape[1:])
        return keras.Model(sub_input, inner(sub_input))(x)

    def head(self, x, classes):
        kind = self.pick(["gap", "flatten", "reshape", "unflatten"])
        if kind == "gap":
            x = layers.GlobalAveragePooling2D()(x)
        elif kind == "flatten" and x.shape[1] * x.shape[2] <= 64:
            x = layers.Flatten()(x)
        elif kind == "reshape" and x.shape[1] * x.shape[2] <= 64:
            x = layers.Reshape((-1,))(x)
        else:
            x = layers.GlobalMaxPooling2D()(x)
            c = self.width()
            x = layers.Dense(4 * c)(x)
            x = layers.Reshape((2, 2, c))(x)
            x = layers.Conv2D(self.width(), 1, activation="relu")(x)
            x = layers.Flatten()(x)
        if self.rng.random() < 0.5:
            x = layers.Dense(self.width() * 2, activation="relu")(x)
        return layers.Dense(classes)(x)


def random_model(seed: int) -> keras.Model:
    b = _Builder(seed)
    size = int(b.pick([6, 8, 10]))
    inputs = keras.Input((size, size, 3))
    x = b.conv(inputs)
    blocks = [b.chain, b.residual, b.projected_residual, b.concat, b.depthwise, b.squeeze_excite,
              b.spatial, b.rescale, b.nested, b.nested, b.grouped]
    weights = np.array([3, 3, 2, 2, 2, 2, 2, 1, 2, 1, 0.3])
    for _ in range(int(b.rng.integers(2, 7))):
        block = blocks[int(b.rng.choice(len(blocks), p=weights / weights.sum()))]
        x = block(x)
    return keras.Model(inputs, b.head(x, int(b.rng.integers(2, 5))), name=f"random_{seed}")

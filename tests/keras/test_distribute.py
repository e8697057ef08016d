"""Pruning under tf.distribute.MirroredStrategy gives the masks of a single device.

Logical devices must be configured before TensorFlow initialises, so the comparison runs in a
fresh Python process with two logical CPUs.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, tfprune

    def build():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv0")(inputs)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    initial = build().get_weights()
    results = {}
    for name, strategy in [("one", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        with strategy.scope():
            model = build()
        model.set_weights(initial)
        cb = tfprune.MagnitudePruning(tfprune.Target(flops=0.4),
                                      tfprune.PolynomialDecay(0, 6, frequency=2), verbose=0)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[cb])
        slots_zero = all(
            np.all(np.take(s.numpy(), p.indices(np.flatnonzero(cb.removed[g.id])), p.axis) == 0)
            for g in cb.groups for p in g.params
            for s in model.optimizer.variables
            if s.name.startswith(p.layer + "_" + p.weight) and s.shape == tuple(
                tfprune.graph.find_variable(model, p.layer, p.weight).shape))
        results[name] = {"replicas": strategy.num_replicas_in_sync,
                         "removed": {str(k): v.tolist() for k, v in cb.removed.items()},
                         "steps": [e.step for e in cb.events], "slots_zero": bool(slots_zero),
                         "weights": [w.tolist() for w in model.get_weights()]}
    json.dump(results, sys.stdout)
""")


def test_mirrored_strategy_gives_the_masks_of_one_device():
    import numpy as np

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    one, mirrored = results["one"], results["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert one["steps"] == mirrored["steps"] == [0, 2, 4, 6]
    assert any(any(r) for r in one["removed"].values())
    assert mirrored["removed"] == one["removed"]
    assert mirrored["slots_zero"] and one["slots_zero"]
    for a, b in zip(one["weights"], mirrored["weights"]):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

"""CAMP-HiVe on MNIST: gradual pruning during fit to a quarter of the FLOPs (slow)."""

import keras
import pytest

import tfprune
from tfprune.keras.camp_hive import CampHiVe


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False])
def test_mnist_quarter_flops(shared_data, merge):
    (x, y), (x_test, y_test) = tfprune.datasets.load_mnist(shared_data)
    x, x_test = x[..., None].astype("float32"), x_test[..., None].astype("float32")
    keras.utils.set_random_seed(0)
    model = tfprune.zoo.small_cnn()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # Two epochs: BatchNormalization's moving statistics (momentum 0.99) settle.
    model.fit(x[:20000], y[:20000], batch_size=100, epochs=2, verbose=0)
    dense = model.evaluate(x_test, y_test, verbose=0)[1]
    pruning = CampHiVe(tfprune.Target(flops=0.25),
                       tfprune.PolynomialDecay(begin_step=400, end_step=600, frequency=50),
                       calibration_data=(x[20000:20256], y[20000:20256]), merge=merge,
                       beta=0.5, min_density=0.1, verbose=0)
    model.fit(x[:20000], y[:20000], batch_size=100, epochs=4, initial_epoch=2, verbose=0,
              callbacks=[pruning])
    pruned = model.evaluate(x_test, y_test, verbose=0)[1]
    small = tfprune.strip(model)
    flops = tfprune.profile(small).flops / tfprune.profile(model).flops
    print(f"\nMNIST small_cnn merge={merge}: dense {dense:.4f}, pruned to {flops:.3f} of the "
          f"FLOPs: {pruned:.4f}; events {[r.step for r in pruning.records]}, "
          f"folds {[r.folded for r in pruning.records]}")
    assert flops <= 0.25
    assert dense > 0.95 and pruned > 0.95
    assert all(r.error_merged <= r.error_removal for r in pruning.records if merge)

"""SOSP-H against the true loss change of removing single channels, and one-shot pruning of a
converged CNN by every method (slow; `pytest -m slow tests/methods/test_sosp_digits.py -s`)."""

import keras
import numpy as np
import pytest

import tfprune
from tfprune.criteria import ScoringContext
from tfprune.criteria.sosp import SOSPSaliency
from tfprune.keras.oneshot import METHODS

pytestmark = pytest.mark.slow

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def converged():
    (x, y), test = tfprune.datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(16, 32), dense=32,
                                  scale=1.0 / 16)
    model.compile(keras.optimizers.Adam(2e-3), LOSS)
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    return model, (x[:512], y[:512]), test


def _loss(model, data):
    return float(LOSS(data[1], model.predict(data[0], verbose=0)))


def _ranks(values):
    return np.argsort(np.argsort(values))


def test_saliency_ranks_channels_like_their_true_loss_change(converged):
    model, calib, _ = converged
    groups = [g for g in tfprune.channel_groups(model) if g.prunable]
    context = ScoringContext(model, calibration_data=calib, groups=groups)
    criterion = SOSPSaliency()
    criterion.prepare(context)
    base = _loss(model, calib)
    print(f"\ndigits CNN, calibration loss {base:.4f}; per group: Spearman correlation of the "
          "SOSP-H saliency with the true loss change of removing one channel, medians")
    for group in groups:
        saliency = criterion(group, context)
        true = np.array([_loss(tfprune.mask_channels(model, {group.id: [c]}), calib) - base
                         for c in range(group.size)])
        rho = np.corrcoef(_ranks(saliency), _ranks(true))[0, 1]
        print(f"  {group.describe()[:48]:<48} rho {rho:.2f}  saliency {np.median(saliency):.4f}"
              f"  true {np.median(true):.4f}")
        assert rho > 0.3


@pytest.mark.parametrize("flops", [0.5, 0.3])
def test_one_shot_pruning_of_a_converged_model(converged, flops):
    model, calib, test = converged
    target = tfprune.Target(flops=flops)
    options = {"rd": {"grid": 10}, "sosp_h per FLOP": {"per_flop": True}}
    rows = {}
    for name in [m for m in METHODS if m != "camp_hive"] + ["sosp_h per FLOP"]:
        method = name.split()[0]
        small = tfprune.prune(model, method, target, calib, **options.get(name, {}))
        accuracy = float(np.mean(small.predict(test[0], verbose=0).argmax(-1) == test[1]))
        rows[name] = (_loss(small, calib), accuracy)
    print(f"\ndigits CNN to {flops:.0%} of its FLOPs, no fine-tuning (calibration loss, top-1):")
    for name, (loss, accuracy) in rows.items():
        print(f"  {name:<16} {loss:.3f}  {accuracy:.4f}")
    # The rate-distortion allocation keeps the output closest, so it must keep the loss too.
    assert rows["rd"][0] < rows["random"][0]

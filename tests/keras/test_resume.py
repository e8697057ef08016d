"""An interrupted and resumed pruning run ends with exactly the masks of an uninterrupted one."""

import os

import keras
import numpy as np
import pytest

import tfprune

EPOCHS, BATCH = 2, 16     # 64 samples: 4 steps per epoch, events at steps 0, 2, 4, 6


def _callback():
    # Random scores drawn from (seed, step): a resumed run that forgot the masks of the events
    # before the interruption would pick other channels than the uninterrupted run.
    return tfprune.MagnitudePruning(tfprune.Target(flops=0.4),
                                    tfprune.PolynomialDecay(0, 6, frequency=2),
                                    criterion="random", verbose=0)


def _model(tiny_cnn, wrap):
    model = tiny_cnn(seed=3, compile=False)
    if wrap:
        model = tfprune.prunable(model)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(model, data, callbacks, **kwargs):
    return model.fit(*data, batch_size=BATCH, shuffle=False, verbose=0, callbacks=callbacks,
                     **kwargs)


@pytest.fixture(scope="module")
def reference(tiny_cnn, data):
    runs = {}

    def get(wrap):
        if wrap not in runs:
            model, cb = _model(tiny_cnn, wrap), _callback()
            _fit(model, data, [cb], epochs=EPOCHS)
            runs[wrap] = (model, cb)
        return runs[wrap]
    return get


def _assert_same_run(model, cb, reference):
    ref_model, ref_cb = reference
    assert [e.step for e in cb.events] == [4, 6]
    assert cb.removed.keys() == ref_cb.removed.keys()
    for gid in cb.removed:
        np.testing.assert_array_equal(cb.removed[gid], ref_cb.removed[gid])
    for a, b in zip(model.get_weights(), ref_model.get_weights()):
        np.testing.assert_array_equal(a == 0, b == 0)       # the same zeros, bit for bit
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wrap", [False, True])
def test_save_load_and_resume_reproduces_masks(tiny_cnn, data, reference, tmp_path, wrap):
    model = _model(tiny_cnn, wrap)
    first = _callback()
    with pytest.warns(UserWarning, match=r"ends at step 6, after the last step of this fit \(3\)"):
        _fit(model, data, [first], epochs=1)
    assert [e.step for e in first.events] == [0, 2]
    path = os.path.join(tmp_path, "half.keras")
    model.save(path)
    del model
    loaded = keras.saving.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == 4     # the schedule's step is saved
    if wrap:                                                  # and a wrapped model's target
        assert tfprune.keras.saved_target(loaded) == tfprune.Target(flops=0.4)
    cb = _callback()
    _fit(loaded, data, [cb], epochs=EPOCHS, initial_epoch=1)
    _assert_same_run(loaded, cb, reference(wrap))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise RuntimeError("simulated interruption")


def test_backup_and_restore_after_interruption_reproduces_masks(tiny_cnn, data, reference,
                                                                tmp_path):
    backup = os.path.join(tmp_path, "backup")
    model = _model(tiny_cnn, wrap=False)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _fit(model, data, [_callback(), keras.callbacks.BackupAndRestore(backup), _Interrupt(6)],
             epochs=EPOCHS)
    # Resume in the same process and on the same model object, as a notebook would; the
    # restore runs after the pruning callback's on_train_begin.
    cb = _callback()
    _fit(model, data, [cb, keras.callbacks.BackupAndRestore(backup)], epochs=EPOCHS)
    _assert_same_run(model, cb, reference(False))


def test_resuming_toward_another_target_warns_and_records_it(tiny_cnn, data, tmp_path):
    model = _model(tiny_cnn, wrap=True)
    assert tfprune.keras.saved_target(model) is None
    with pytest.warns(UserWarning, match="ends at step 6"):
        _fit(model, data, [_callback()], epochs=1)
    path = os.path.join(tmp_path, "half.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    other = tfprune.MagnitudePruning(tfprune.Target(flops=0.6), tfprune.OneShot(4),
                                     criterion="random", verbose=0)
    with pytest.warns(UserWarning, match=r"pruned toward Target\(flops=0.4\); this run prunes "
                                         r"it toward Target\(flops=0.6\)"):
        _fit(loaded, data, [other], epochs=2, initial_epoch=1)
    assert tfprune.keras.saved_target(loaded) == tfprune.Target(flops=0.6)

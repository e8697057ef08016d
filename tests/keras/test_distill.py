"""Distiller: the loss is the documented formula, only the student trains, pruning callbacks
prune the student, it saves and loads, and bad input is refused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.errors import InvalidPruningArgumentError, UnsupportedModelError


def _pair(tiny_cnn, l2=0.0):
    teacher = tiny_cnn(seed=0, compile=False)
    student = tiny_cnn(seed=1, compile=False)
    if l2:
        student.get_layer("head").kernel_regularizer = keras.regularizers.L2(l2)
    return student, teacher


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _expected(student, teacher, x, y, temperature, alpha, probabilities=False):
    s = student(x, training=False).numpy().astype(np.float64)
    t = teacher(x, training=False).numpy().astype(np.float64)
    if probabilities:
        s, t = np.log(np.clip(s, 1e-7, 1)), np.log(np.clip(t, 1e-7, 1))
    ce = -_log_softmax(s)[np.arange(len(y)), y].mean()
    pt, ps = _log_softmax(t / temperature), _log_softmax(s / temperature)
    kl = (np.exp(pt) * (pt - ps)).sum(axis=-1).mean()
    return (1 - alpha) * ce + alpha * temperature ** 2 * kl


@pytest.mark.parametrize("temperature, alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (3.0, 1.0)])
def test_loss_is_the_weighted_label_loss_plus_the_tempered_kl_to_the_teacher(
        tiny_cnn, data, temperature, alpha):
    student, teacher = _pair(tiny_cnn)
    x, y = data
    kd = tfprune.Distiller(student, teacher, temperature=temperature, alpha=alpha,
                           from_logits=True)
    kd.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = kd.compute_loss(x=x, y=y, y_pred=kd(x, training=False), training=False)
    assert float(loss) == pytest.approx(_expected(student, teacher, x, y, temperature, alpha),
                                        rel=1e-5)
    # The teacher against itself contributes nothing: the loss is the label term alone.
    same = kd.compute_loss(x=x, y=y, y_pred=teacher(x, training=False), training=False)
    assert float(same) == pytest.approx(
        (1 - alpha) * _expected(teacher, teacher, x, y, temperature, 0.0), rel=1e-5, abs=1e-7)


def test_softmax_outputs_are_distilled_through_their_log_probabilities(tiny_cnn, data):
    student, teacher = (keras.Model(m.input, keras.layers.Softmax()(m.output))
                        for m in _pair(tiny_cnn))
    x, y = data
    kd = tfprune.Distiller(student, teacher, temperature=4.0, alpha=0.7)
    kd.compile("sgd", "sparse_categorical_crossentropy")
    loss = kd.compute_loss(x=x, y=y, y_pred=kd(x), training=False)
    assert float(loss) == pytest.approx(
        _expected(student, teacher, x, y, 4.0, 0.7, probabilities=True), rel=1e-4)


def test_regularization_losses_of_the_student_are_added_unweighted(tiny_cnn, data):
    x, y = data
    plain_student, teacher = _pair(tiny_cnn)
    keras.utils.set_random_seed(1)
    regularized = tiny_cnn(seed=1, compile=False)
    inputs = keras.Input((8, 8, 3))
    # Same weights; an activity regularizer adds a known term to `losses`.
    out = keras.layers.ActivityRegularization(l2=0.01)(regularized(inputs))
    student = keras.Model(inputs, out)
    kd = tfprune.Distiller(student, teacher, alpha=0.9, from_logits=True)
    kd.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y_pred = kd(x, training=False)
    loss = float(kd.compute_loss(x=x, y=y, y_pred=y_pred, training=False))
    extra = 0.01 * float(np.sum(plain_student(x).numpy() ** 2)) / len(x)
    base = _expected(plain_student, teacher, x, y, 4.0, 0.9)
    assert loss == pytest.approx(base + extra, rel=1e-4)
    assert extra > 1e-3 * base   # the check can tell the term is there


def test_fit_trains_the_student_toward_the_teacher_and_leaves_the_teacher_alone(tiny_cnn, data):
    student, teacher = _pair(tiny_cnn)
    x, y = data
    before = [w.numpy().copy() for w in teacher.weights]
    kd = tfprune.Distiller(student, teacher, temperature=2.0, alpha=1.0, from_logits=True)
    kd.compile(keras.optimizers.Adam(1e-2),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def gap():
        return float(kd.distillation_loss(teacher(x, training=False), student(x, training=False)))

    start = gap()
    kd.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert gap() < 0.5 * start
    for b, w in zip(before, teacher.weights):
        np.testing.assert_array_equal(b, w.numpy())
    assert teacher.trainable is False
    assert {id(v) for v in kd.trainable_variables} == {id(v) for v in student.trainable_variables}


@pytest.mark.parametrize("make", [
    lambda x, y: tfprune.MagnitudePruning(tfprune.Target(flops=0.5), tfprune.OneShot(0)),
    # CAMP-HiVe takes the curvature of the loss the distiller gave the student.
    lambda x, y: tfprune.CampHiVe(tfprune.Target(flops=0.5), tfprune.OneShot(0),
                                  calibration_data=(x[:32], y[:32]), verbose=0),
], ids=["magnitude", "camp_hive"])
def test_a_pruning_callback_prunes_the_student(tiny_cnn, data, make):
    student, teacher = _pair(tiny_cnn)
    x, y = data
    pruning = make(x, y)
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    kd = tfprune.Distiller(student, teacher, from_logits=True)
    kd.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kd.fit(x, y, epochs=1, batch_size=16, callbacks=[pruning], verbose=0)
    assert pruning.achieved()["flops_kept"] <= 0.5
    small = tfprune.strip(kd.student)
    dense_macs = tfprune.profile(teacher).macs
    assert tfprune.profile(small).macs <= 0.5 * dense_macs
    np.testing.assert_allclose(small(x).numpy(), student(x).numpy(), rtol=1e-4, atol=1e-5)
    for b, w in zip(teacher_before, teacher.weights):   # the teacher keeps every channel
        np.testing.assert_array_equal(b, w.numpy())


def test_compile_gives_an_uncompiled_student_the_loss_and_keeps_a_compiled_one(tiny_cnn):
    student, teacher = _pair(tiny_cnn)
    kd = tfprune.Distiller(student, teacher)
    kd.compile("adam", "sparse_categorical_crossentropy")
    assert student.loss == "sparse_categorical_crossentropy"
    compiled = tiny_cnn(seed=2)            # compiled by the fixture with its own loss
    own = compiled.loss
    tfprune.Distiller(compiled, teacher).compile("adam", "mse")
    assert compiled.loss is own


def test_saves_and_loads_with_its_settings(tiny_cnn, data, tmp_path):
    student, teacher = _pair(tiny_cnn)
    x, y = data
    kd = tfprune.Distiller(student, teacher, temperature=3.0, alpha=0.6, from_logits=True)
    kd.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kd.fit(x, y, epochs=1, batch_size=32, verbose=0)
    kd.save(tmp_path / "kd.keras")
    again = keras.models.load_model(tmp_path / "kd.keras")
    assert isinstance(again, tfprune.Distiller)
    assert (again.temperature, again.alpha, again.from_logits) == (3.0, 0.6, True)
    np.testing.assert_allclose(again.predict(x, verbose=0), kd.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(again.teacher(x).numpy(), teacher(x).numpy(), atol=1e-6)
    assert float(again.compute_loss(x=x, y=y, y_pred=again(x), training=False)) == pytest.approx(
        float(kd.compute_loss(x=x, y=y, y_pred=kd(x), training=False)), rel=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"student": "model"}, UnsupportedModelError, "student must be a keras.Model"),
    ({"teacher": None}, UnsupportedModelError, "teacher must be a keras.Model"),
    ({"same": True}, UnsupportedModelError, "same model"),
    ({"temperature": 0}, InvalidPruningArgumentError, "temperature"),
    ({"temperature": float("inf")}, InvalidPruningArgumentError, "temperature"),
    ({"alpha": 1.5}, InvalidPruningArgumentError, r"alpha must be a number in \[0, 1\]"),
    ({"alpha": True}, InvalidPruningArgumentError, "alpha"),
])
def test_bad_input_is_refused(tiny_cnn, kwargs, error, match):
    student, teacher = _pair(tiny_cnn)
    kwargs = dict(kwargs)
    if kwargs.pop("same", False):
        teacher = student
    args = {"student": student, "teacher": teacher, **kwargs}
    with pytest.raises(error, match=match):
        tfprune.Distiller(**args)

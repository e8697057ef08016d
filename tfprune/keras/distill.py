"""`Distiller`: fine-tune a pruned model on its labels and on the dense model's outputs.

Knowledge distillation (Hinton et al. 2015) trains a network on the softened class
probabilities of another as well as on the labels; the dense model is the natural teacher of
its pruned self. Whether it helps depends on the budget: in tfprune's ResNet-8 benchmark (10
epochs, 25% of the FLOPs) it did not (`docs/BENCHMARKS.md`, run G). `Distiller(student,
teacher)` is a Keras model whose outputs are the student's; its loss is

    (1 - alpha) * compiled_loss(y, student(x))
    + alpha * T^2 * KL(p_T(teacher(x)) || p_T(student(x)))
    + the student's regularization losses,

where `p_T` is the softmax at temperature `T`. The teacher is frozen and runs in inference
mode. Pruning callbacks prune the student: `fit` the distiller with `CampHiVe`, `SOSPH`, ...
as with the student itself, then `tfprune.strip(distiller.student)`.

```python
import tfprune
teacher = keras.models.load_model("dense.keras")
student = keras.models.clone_model(teacher); student.set_weights(teacher.get_weights())
kd = tfprune.Distiller(student, teacher, temperature=4.0, alpha=0.9)
kd.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
kd.fit(x, y, epochs=10, callbacks=[tfprune.CampHiVe(tfprune.Target(flops=0.25), ...)])
small = tfprune.strip(kd.student)
```
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfprune.errors import InvalidPruningArgumentError, UnsupportedModelError


@keras.saving.register_keras_serializable(package="tfprune")
class Distiller(keras.Model):
    """Trains `student` on the compiled loss and on a frozen `teacher`'s softened outputs.

    Calling the distiller calls the student; `predict`, `evaluate` and the compiled metrics
    see the student's outputs. Only the student's variables are trained (the teacher is set
    non-trainable and called with `training=False`). `compile` also gives an uncompiled
    student the same loss, so that criteria which need the task's loss (CAMP-HiVe, SOSP-H,
    Taylor) score the student on it. Both models must map the same inputs to outputs of the
    same shape (class scores, last axis).

    Args:
        student: the Keras model to train (often the dense model being pruned); its weights
            change.
        teacher: a trained Keras model with the same inputs and output shape; it is frozen
            (`teacher.trainable = False`).
        temperature: softmax temperature `T > 0` of the distillation term (4 by default).
        alpha: weight of the distillation term in `[0, 1]`; the compiled loss gets `1 - alpha`.
        from_logits: whether both models output logits; if False (a softmax output, as the
            MLPerf Tiny ResNet-8), log-probabilities are taken as the logits. Set it to match
            the models: logits read as probabilities give a meaningless distillation term.
        **kwargs: `keras.Model` arguments (`name`).

    Raises:
        UnsupportedModelError: `student` or `teacher` is not a Keras model, or they are the
            same object.
        InvalidPruningArgumentError: `temperature` or `alpha` out of range.

    Example:

    ```python
    import keras, tfprune
    teacher = tfprune.zoo.small_cnn()              # trained; ends in logits
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    kd = tfprune.Distiller(student, teacher, temperature=4.0, alpha=0.9, from_logits=True)
    kd.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kd.fit(x, y, epochs=1, callbacks=[tfprune.MagnitudePruning(tfprune.Target(flops=0.5),
                                                               tfprune.OneShot(0))])
    small = tfprune.strip(kd.student)
    ```
    """

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.9,
                 from_logits: bool = False, **kwargs):
        for name, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, keras.Model):
                raise UnsupportedModelError(
                    f"Distiller: {name} must be a keras.Model; received {type(m).__name__}")
        if student is teacher:
            raise UnsupportedModelError(
                "Distiller: the student and the teacher are the same model; distil from a "
                "frozen copy (keras.models.clone_model + set_weights)")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise InvalidPruningArgumentError(
                f"Distiller: temperature must be a finite number > 0; received {temperature!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise InvalidPruningArgumentError(
                f"Distiller: alpha must be a number in [0, 1]; received {alpha!r}")
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        if loss is not None and getattr(self.student, "loss", None) is None:
            # Plain SGD holds no slot variables: the student's file stays as small as before.
            self.student.compile(optimizer="sgd", loss=loss)

    def compile_from_config(self, config):
        # The base class skips a custom `compile`; this one takes the same arguments.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.student.built:
            self.optimizer.build(self.trainable_variables)

    def _log_probs(self, outputs):
        outputs = ops.cast(outputs, "float32")
        if self.from_logits:
            return outputs
        return ops.log(ops.clip(outputs, 1e-7, 1.0))

    def distillation_loss(self, teacher_outputs, student_outputs):
        """`T^2 * KL(p_T(teacher) || p_T(student))`, averaged over the batch."""
        t = self.temperature
        teacher = ops.log_softmax(self._log_probs(teacher_outputs) / t, axis=-1)
        student = ops.log_softmax(self._log_probs(student_outputs) / t, axis=-1)
        kl = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
        return t * t * ops.mean(kl)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = []
        if self._compile_loss is not None and self.alpha < 1:
            label = self._compile_loss(y, y_pred, sample_weight)
            if label is not None:
                losses.append((1.0 - self.alpha) * label)
        if self.alpha > 0:
            teacher = ops.stop_gradient(self.teacher(x, training=False))
            losses.append(self.alpha * self.distillation_loss(teacher, y_pred))
        for loss in self.losses:
            losses.append(self._aggregate_additional_loss(loss))
        if not losses:
            return ops.zeros(())
        return ops.sum(ops.stack([ops.cast(v, "float32") for v in losses]))

    def get_config(self):
        config = super().get_config()
        config.update(student=keras.saving.serialize_keras_object(self.student),
                      teacher=keras.saving.serialize_keras_object(self.teacher),
                      temperature=self.temperature, alpha=self.alpha,
                      from_logits=self.from_logits)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def pruned_model(model):
    """The model whose channels a pruning callback removes: a `Distiller`'s student, or `model`."""
    return model.student if isinstance(model, Distiller) else model

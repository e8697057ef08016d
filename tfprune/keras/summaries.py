"""`PruningSummaries`: TensorBoard scalars and histograms of pruning progress."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfprune.errors import InvalidPruningArgumentError
from tfprune.keras.callback import active_pruning


class PruningSummaries(keras.callbacks.Callback):
    """Writes the pruning state of the `PruningCallback` of the same `fit` to TensorBoard.

    Scalars: kept FLOPs and params and sparsity (`pruning/...`, as in the logs), and the
    fraction masked of each masked variable (`pruned/<layer>/<weight>`). Histograms: what the
    pruning callback's `summary_histograms()` returns (kept channels per group, sparsity per
    variable, and e.g. curvature for the methods that compute it). All at the optimizer step.

    Args:
        log_dir: the TensorBoard log folder (use the same one as `keras.callbacks.TensorBoard`
            to see them together).
        update_freq: `"epoch"`, or an integer: also write the scalars every that many batches.

    Example:

    ```python
    import tfprune
    model.fit(x, y, epochs=3, callbacks=[tfprune.MagnitudePruning(tfprune.Target(flops=0.5)),
                                        tfprune.PruningSummaries("logs/pruning")])
    ```
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if update_freq != "epoch" and (isinstance(update_freq, bool)
                                       or not isinstance(update_freq, int) or update_freq < 1):
            raise InvalidPruningArgumentError(
                f"PruningSummaries(update_freq={update_freq!r}): expected 'epoch' or an integer "
                ">= 1 (batches)")
        self.log_dir = str(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _write(self, logs, histograms):
        pruning = active_pruning(self.model)
        scalars = {k: v for k, v in (logs or {}).items() if k.startswith("pruning/")}
        if pruning is not None:  # not through logs: callbacks after this one fill them
            scalars.update({f"pruning/{k}": v for k, v in pruning.achieved().items()})
        step = self._step()
        with self._writer.as_default():
            for key, value in scalars.items():
                tf.summary.scalar(key, value, step=step)
            if pruning is not None and histograms:
                for name, fraction in pruning.layer_report().items():
                    tf.summary.scalar(f"pruned/{name}", fraction, step=step)
                for name, values in pruning.summary_histograms().items():
                    tf.summary.histogram(f"pruning/{name}", values, step=step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._write(logs, histograms=False)

    def on_epoch_end(self, epoch, logs=None):
        self._write(logs, histograms=True)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {"log_dir": self.log_dir, "update_freq": self.update_freq}

"""`PruningSummaries`: TensorBoard scalars and histograms of pruning progress."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfprune.errors import InvalidPruningArgumentError
from tfprune.keras.callback import active_pruning


def _metadata(plugin):
    return tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin))


# Written with `tf.summary.write` in the formats of TensorBoard's scalar and histogram plugins,
# so that writing needs no TensorBoard installation (`tf.summary.scalar` does).
_SCALAR, _HISTOGRAM = _metadata("scalars"), _metadata("histograms")


def _histogram(values, bins=30):
    """`(bins, 3)` rows of (left edge, right edge, count), TensorBoard's histogram tensor."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


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
            if pruning is not None and histograms:
                scalars.update({f"pruned/{name}": fraction
                                for name, fraction in pruning.layer_report().items()})
                for name, values in pruning.summary_histograms().items():
                    tf.summary.write(f"pruning/{name}", _histogram(values), step=step,
                                     metadata=_HISTOGRAM)
            for key, value in scalars.items():
                tf.summary.write(key, tf.constant(value, tf.float32), step=step,
                                 metadata=_SCALAR)
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

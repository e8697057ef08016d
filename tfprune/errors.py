"""Errors raised by tfprune.

Every error tfprune raises on bad input derives from `TfpruneError`, and also from the
built-in exception a Python user would expect (`ValueError`, `TypeError`, `KeyError`), so
that `except ValueError` keeps working. Messages name what was wrong (the layer, the group,
the argument) and what is accepted.

Example:

```python
import tfprune
try:
    tfprune.shrink(model, {0: list(range(16))})
except tfprune.errors.InvalidRemovalError as e:
    print(e)   # "group 0 (conv2d -> ...) has 16 channels: removing all 16 would ..."
```
"""


class TfpruneError(Exception):
    """Base class of every error raised by tfprune."""


# --- models and graphs -------------------------------------------------------------------


class UnsupportedModelError(TfpruneError, TypeError):
    """The model cannot be analysed (e.g. a subclassed model whose graph cannot be traced)."""


class SharedLayerError(UnsupportedModelError):
    """A layer is called at several places of the graph and tfprune cannot prune it there."""


class UnknownGroupError(TfpruneError, KeyError):
    """A channel-group id that the model does not have."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotPrunableError(TfpruneError, ValueError):
    """Channels of a group that cannot be pruned were asked to be removed."""


class InvalidRemovalError(TfpruneError, ValueError):
    """Channel indices out of range, duplicated, or removing every channel of a group."""


class NothingToPruneError(TfpruneError, ValueError):
    """The model has no prunable channel group (or no prunable weight)."""


# --- curvature ---------------------------------------------------------------------------


class CurvatureError(TfpruneError, ValueError):
    """Bad input to a curvature computation (vectors, data, loss, weights)."""


class NonFiniteError(CurvatureError, FloatingPointError):
    """A loss, gradient or curvature product is NaN or infinite."""


# --- pruning during fit ------------------------------------------------------------------


class InvalidTargetError(TfpruneError, ValueError):
    """A pruning target that is malformed or cannot be met."""


class InvalidScheduleError(TfpruneError, ValueError):
    """A pruning schedule that is malformed (e.g. its end precedes its begin)."""


class MissingCalibrationDataError(TfpruneError, ValueError):
    """A criterion needs calibration data and none was given."""


# --- data --------------------------------------------------------------------------------


class DataError(TfpruneError, ValueError):
    """Data of the wrong structure, shape or type, or a data source that cannot be read."""


# --- export ------------------------------------------------------------------------------


class ExportError(TfpruneError, RuntimeError):
    """Conversion or export of a model failed."""


class NotAKerasModelError(ExportError, ValueError):
    """A file that is not a Keras model."""


class UnsupportedOpError(ExportError):
    """The converted model uses an op that the target runtime (TFLite Micro, Edge TPU) lacks."""


class BudgetExceededError(ExportError):
    """The model does not fit the given flash or arena budget."""


# Errors added by later modules go below this line (append only).


# --- profile -----------------------------------------------------------------------------


class ProfileError(TfpruneError, ValueError):
    """A model or argument that cannot be counted: a shape with undefined dimensions where
    MACs depend on it, or a batch size that is not a positive integer."""


# --- pruning during fit (criteria, allocation, callbacks) --------------------------------


class InvalidCriterionError(TfpruneError, ValueError):
    """An unknown importance criterion, or one that cannot score the chosen granularity."""


class InvalidPruningArgumentError(TfpruneError, ValueError):
    """A pruning callback argument outside what it accepts (granularity, minimums, ...)."""


# --- export (strip-and-convert) ----------------------------------------------------------


class InvalidExportOptionError(ExportError, ValueError):
    """An export option outside what it accepts (a name that is not a C identifier, a batch
    size or budget that is not a positive integer, ...)."""


class CalibrationRequiredError(MissingCalibrationDataError, ExportError):
    """Full-integer conversion was asked for without calibration data: the converter would
    produce a hybrid (float-activation) model that TFLite Micro and the Edge TPU reject."""


class OutputDirError(ExportError, OSError):
    """The output folder cannot be written, or holds files that are not a tfprune export."""


class MicroRuntimeUnavailableError(ExportError, ImportError):
    """The TFLite Micro Python interpreter (`tflite-micro`) is not installed on this platform."""


# --- pruning methods (SOSP-H, rate-distortion pruning, one-shot prune) -------------------


class MissingLossError(TfpruneError, ValueError):
    """A method needs the model's loss (gradients, curvature) and has none: the model is not
    compiled with a loss and no `loss=` was given."""

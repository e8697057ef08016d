"""`SOSPH`: second-order structured pruning with global ranking (Nonnenmacher et al., 2022)."""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Tuple

import numpy as np

from tfprune import allocation as allocation_lib
from tfprune.criteria.base import CHANNEL
from tfprune.criteria.sosp import SOSPSaliency
from tfprune.errors import InvalidPruningArgumentError
from tfprune.graph.group import PRODUCER
from tfprune.keras.callback import PruningCallback


@dataclasses.dataclass(frozen=True)
class LayerRatio:
    """How much of one layer's output channels a pruning removed.

    Attributes:
        layer: the layer path (a producer of the group: Conv, Dense, ...).
        group: the id of the channel group the layer writes.
        channels: channels of the group.
        removed: channels removed.
        bottleneck: whether the layer is flagged as an architectural bottleneck.
    """

    layer: str
    group: int
    channels: int
    removed: int
    bottleneck: bool

    @property
    def pruned(self) -> float:
        """Fraction of the layer's output channels removed."""
        return self.removed / self.channels


@dataclasses.dataclass(frozen=True)
class BottleneckReport:
    """Per-layer pruning ratios, and the layers pruned far less than the average.

    A layer is an *architectural bottleneck* when its pruned fraction is below
    `ratio` times the mean pruned fraction of all reported layers (each layer counts once):
    a global ranking kept almost all of its channels while it pruned the others, so the layer
    is likely too narrow. Nonnenmacher et al. widened such layers (x2) and pruned again, which
    raised accuracy at the same cost. Nothing is flagged when nothing was pruned.

    Attributes:
        layers: one `LayerRatio` per producing layer of a prunable group, in model order.
        mean_pruned: the mean pruned fraction over `layers`.
        ratio: the rule's factor.

    Example:

    ```python
    import numpy as np, tfprune
    from tfprune.keras.sosp import BottleneckReport
    groups = [g for g in tfprune.channel_groups(tfprune.zoo.resnet8()) if g.prunable]
    removed = {g.id: np.arange(g.size) < g.size // 2 for g in groups}   # half of each
    removed[groups[0].id][:] = False                                    # but none of one
    report = BottleneckReport.from_removed(groups, removed)
    print(report)
    report.bottlenecks             # ('conv2d', 'conv2d_2'): the producers of that group
    ```
    """

    layers: Tuple[LayerRatio, ...]
    mean_pruned: float
    ratio: float

    @classmethod
    def from_removed(cls, groups, removed, ratio: float = 0.25) -> "BottleneckReport":
        """The report of `removed` (`{group id: bool array (size,)}`) over `groups`."""
        rows = [(m.layer, g.id, g.size, int(np.sum(removed[g.id])))
                for g in groups if g.id in removed for m in g.members if m.role == PRODUCER]
        mean = float(np.mean([r / n for _, _, n, r in rows])) if rows else 0.0
        layers = tuple(LayerRatio(layer, gid, n, r, mean > 0 and r / n < ratio * mean)
                       for layer, gid, n, r in rows)
        return cls(layers, mean, float(ratio))

    @property
    def bottlenecks(self) -> Tuple[str, ...]:
        """The paths of the flagged layers."""
        return tuple(l.layer for l in self.layers if l.bottleneck)

    def __str__(self):
        width = max([len(l.layer) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}}  group  kept/channels  pruned"]
        for l in self.layers:
            flag = "  <- bottleneck" if l.bottleneck else ""
            lines.append(f"{l.layer:<{width}}  {l.group:>5}  {l.channels - l.removed:>6}/"
                         f"{l.channels:<6}  {l.pruned:6.1%}{flag}")
        lines.append(f"mean pruned {self.mean_pruned:.1%}; bottleneck: pruned < "
                     f"{self.ratio:g} x mean ({self.ratio * self.mean_pruned:.1%}): "
                     f"{', '.join(self.bottlenecks) or 'none'}")
        return "\n".join(lines)


class SOSPH(PruningCallback):
    """SOSP-H: rank every channel of every layer together by a second-order saliency, prune once.

    The saliency of channel `s` is `| -theta_s . g + 1/2 theta_s . (H theta_P) |`
    (`tfprune.criteria.sosp.SOSPSaliency`): the second-order loss change of removing the
    channel's weights, where the curvature term counts the correlations with all prunable
    structures `P` through one product `H theta_P` per calibration batch (Gauss-Newton by
    default). All channels of all groups are ranked together and the lowest are removed until
    the target holds (to within one channel of one group); with `per_flop=True` they are
    ranked by saliency per FLOP that removing them saves (the `CostModel`'s marginal FLOPs
    at the event; with the default allocation, each group's saliencies over their mean, then
    per FLOP). After each event `report` holds a `BottleneckReport` (printed with
    `verbose=1`) that flags layers pruned far less than average: candidates to widen.

    The method is single shot: train, prune (the default schedule `OneShot(0)` prunes before
    the first step of `fit`), fine-tune. Any schedule works (the saliencies are recomputed at
    every event), and so does any allocation: e.g. `allocation="uniform"`, or a
    layer-adaptive one, with the SOSP saliency ranking channels inside each group.

    Args:
        target: a `tfprune.Target`.
        calibration_data: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)` batches (a few
            hundred to a thousand training samples, without augmentation).
        schedule: a pruning schedule (default `tfprune.OneShot(0)`).
        hessian: `"gauss_newton"` (default, positive semi-definite) or `"exact"`.
        per_flop: rank by saliency per FLOP removed instead of by saliency. It needs an
            allocation that ranks all groups together (None, `"normalized"`, `"global"` or a
            `tfprune.allocation.GlobalRanking`). Per FLOP whatever binds: when another budget
            of the target binds (`Target(flops=0.25, params=0.18)`), a warning names the
            ranking per unit of the budget that binds (`per_flop=False, allocation=
            GlobalRanking(per_unit_cost=True, normalize="mean")`).
        loss: the loss for the curvature; None uses the model's compiled loss.
        allocation: how the ranking becomes a pruning (see `tfprune.PruningCallback`);
            None is `"normalized"` (every channel ranked against its own group's mean);
            `"global"` is the paper's raw ranking, which on ResNet-8 empties the widest
            group (`docs/methods/sosp_h.md`).
        bottleneck_ratio: the report flags layers pruned less than this times the mean
            pruned fraction, in `(0, 1]`.
        batch_size: samples per batch of the curvature product for `(x, y)` arrays.
        **kwargs: `min_channels`, `min_density`, `verbose`, `seed` of `PruningCallback`, and
            its `merge_rule` (fold the removed channels into the kept ones, e.g.
            `"regression"`).

    Example:

    ```python
    import keras, numpy as np, tfprune
    model = tfprune.zoo.small_cnn(input_shape=(8, 8, 1), widths=(4, 8), dense=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(64, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 10, 64)
    sosp = tfprune.SOSPH(tfprune.Target(flops=0.5), calibration_data=(x[:32], y[:32]),
                         verbose=0)
    model.fit(x, y, epochs=1, callbacks=[sosp], verbose=0)
    print(sosp.report.bottlenecks)
    small = tfprune.strip(model)
    ```
    """

    def __init__(self, target, calibration_data, schedule=None, hessian: str = "gauss_newton",
                 per_flop: bool = False, loss=None, allocation=None,
                 bottleneck_ratio: float = 0.25, batch_size: int = 128, **kwargs):
        if not isinstance(per_flop, bool):
            raise InvalidPruningArgumentError(f"SOSPH(per_flop={per_flop!r}): expected True or "
                                              "False")
        if isinstance(bottleneck_ratio, bool) or not isinstance(bottleneck_ratio, numbers.Real) \
                or not 0.0 < bottleneck_ratio <= 1.0:
            raise InvalidPruningArgumentError(
                f"SOSPH(bottleneck_ratio={bottleneck_ratio!r}): expected a number in (0, 1]")
        if "granularity" in kwargs and kwargs["granularity"] != CHANNEL:
            raise InvalidPruningArgumentError(
                f"SOSPH(granularity={kwargs['granularity']!r}): SOSP-H prunes structures; only "
                "'channel' is accepted")
        kwargs.pop("granularity", None)
        super().__init__(SOSPSaliency(hessian, loss, batch_size), target, schedule,
                         allocation=allocation, granularity=CHANNEL,
                         calibration_data=calibration_data, **kwargs)
        self.per_flop = per_flop
        if per_flop:
            if not isinstance(self.allocation, allocation_lib.GlobalRanking):
                raise InvalidPruningArgumentError(
                    f"SOSPH(per_flop=True, allocation={allocation!r}): per_flop ranks the "
                    "channels of all groups together by saliency per FLOP, which needs an "
                    "allocation that ranks them together: None, 'normalized', 'global' or a "
                    "tfprune.allocation.GlobalRanking")
            # The division by FLOPs comes after the normalization: a group's FLOPs per channel
            # are one number, so dividing first would cancel in the group's mean.
            self.allocation = allocation_lib.GlobalRanking(
                per_unit_cost=True, normalize=self.allocation.normalize)
        self.bottleneck_ratio = float(bottleneck_ratio)
        self.report = None
        self._warned_binding = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        try:  # a missing or unsuitable loss is refused before the first step, not at an event
            self.criterion.check(self.subject, self.groups)
        except Exception:
            self.on_train_end()
            raise

    def _unit_cost(self, keep, binding=None) -> str:
        if self.per_flop and binding not in (None, "flops") and not self._warned_binding:
            self._warned_binding = True
            warnings.warn(
                f"SOSPH(per_flop=True): the {binding} budget of {self.target!r} binds, and "
                "ranking channels per FLOP meets it by removing FLOPs that the target does not "
                "ask for (ResNet-8 with Target(flops=0.25, params=0.18): 0.11 of the FLOPs "
                "kept and 71.4% top-1 after fine-tuning, against 0.21 and 74.3% ranked per "
                "param). To rank per unit of the budget that binds, pass per_flop=False, "
                "allocation=tfprune.allocation.GlobalRanking(per_unit_cost=True, "
                "normalize='mean')", stacklevel=2)
        return "flops" if self.per_flop else super()._unit_cost(keep, binding)

    def prune(self, step: int):
        event = super().prune(step)
        if event.skipped is None:
            self.report = BottleneckReport.from_removed(self.groups, self._removed,
                                                        self.bottleneck_ratio)
            if self.verbose:
                print(self.report)
        return event

    def get_config(self):
        config = super().get_config()
        criterion = config.pop("criterion")["config"]
        config.update(hessian=criterion["hessian"], loss=criterion["loss"],
                      batch_size=criterion["batch_size"], per_flop=self.per_flop,
                      bottleneck_ratio=self.bottleneck_ratio)
        return config

"""Quality of the pruning methods: ResNet-8 on CIFAR-10 at a FLOPs (or sparsity) target.

One run is `(method, granularity, target, epochs, seed, min_density, prune_epochs)`. It
starts from the cached dense ResNet-8 (`bench_common.dense_resnet8`, 30 epochs, never
retrained) and fine-tunes it for `epochs` more epochs (30 .. 30 + epochs - 1, 10 by default:
the protocol's budget) with the protocol's data stream and the fine-tuning recipe of
`bench_common.fine_tune`: Adam, cosine decay from 2e-3 (the dense peak, rewound) to 0 over
the run's steps. Pruning happens during the first `prune_epochs` of those epochs (5 by
default), every method on the same events: every half epoch (S/2 steps, S the steps of an
epoch) from step 0 to the middle of the last pruning epoch, 2 x `prune_epochs` events, the
target reached by tfmot's cubic ramp (`tfprune.PolynomialDecay(0, (2 prune_epochs - 1) S/2,
S/2)`); RDPrune, whose rounds follow its own geometric pace, gets the same number of rounds
at the same steps. `prune_epochs=0` prunes once before the first step (`OneShot(0)`), or,
with `prune_events=N`, gradually over the first half of the first epoch: N events on the
same cubic ramp, every `S/(2N)` steps up to the middle of the epoch (plus one at step 0, the
ramp's start, which prunes nothing; N rounds for RDPrune), stripped after that epoch. Every
fine-tuning run takes the protocol's batch of 128 images unless `--batch-size` says otherwise,
the peak rate of 2e-3 unless `--lr` does, and the protocol's flip and translation unless
`--augment` asks for the flip alone or no augmentation.

At channel granularity the model is then stripped (`tfprune.strip`) and the physically smaller
model fine-tunes for the remaining epochs, its learning rate continuing the same cosine
schedule (`ContinuedSchedule`) with a fresh Adam state, or (`--after-strip rewind`) a new
cosine decay from the peak over the remaining epochs. At weight granularity nothing can be
stripped (single zeros stay in the kernels), so the callback stays attached for every epoch.
The reference `dense_ft` fine-tunes the dense model with the same recipe and no pruning: the
accuracy the extra epochs give without pruning, and the plain `fit` time of those epochs.
`narrow` trains the architecture made narrower (`bench_common.width_mult_for_flops`) from
scratch for 30 + `epochs` epochs with the protocol's recipe and batch; `narrow_ft` trains it
for the dense model's 30 epochs and then fine-tunes it with the pruning runs' recipe (a
cosine decay from the peak over `epochs` epochs, at `--batch-size`): the training a pruned
model gets, the architecture fixed from the start.

Each run appends a row to `cache/results/<results>.json` (`bench_common.append_result`) and
saves the stripped model to `cache/quality/<run>.keras` (atomically, as soon as the run
ends); a run whose row exists is skipped, so the script can be killed and restarted. A row
holds float top-1 (10k test images), the deployment figures of `bench_common.
deployment_figures` (int8 TFLite Micro top-1 on the lossless 200, int8 bytes, arena, TFLite
Micro time), params, MACs, the achieved FLOPs fraction, the channels each group keeps, the
wall and CPU seconds of the pruning epoch and of the whole run, the seed and the machine.

Every final model (dense and narrow included) then has its BatchNormalization statistics
re-estimated on 10,000 clean training images (`tfprune.recalibrate_batchnorm`, batches of
250, a seeded draw; `--recalibrate 0` skips it): `top1` is measured after it and
`top1_as_trained` before, and the deployment figures are those of the recalibrated model.

Calibration data (training images, no augmentation, one seeded draw): 128 images for
CAMP-HiVe (its benchmark setting, `tools/bench_camp_hive_cost.py`) and for `gates_uniform`
(CAMP-HiVe's channel-gate saliency under the uniform allocation, no merge), 1,024 for SOSP-H,
RDPrune and Taylor (their documented sizes); `--calibration N` gives a method N instead.

Usage:

    python tools/bench_quality.py --plan a            # 25% FLOPs, every channel method
    python tools/bench_quality.py --method camp_hive,l1 --flops 0.5
    python tools/bench_quality.py --method rd_prune,magnitude --sparsity 0.9 --epochs 2
    python tools/bench_quality.py --method narrow --flops 0.25     # 30 + 10 epochs from scratch
    python tools/bench_quality.py --method narrow_ft --batch-size 32  # 30 + 10 at batch 32
    python tools/bench_quality.py --method camp_hive --options diagonal=gates --calibration 1024
    python tools/bench_quality.py --method l1_uniform --prune-epochs 0 --after-strip rewind \
        --batch-size 32                                             # run K's best recipe
    python tools/bench_quality.py --method l1_uniform --prune-epochs 0 --after-strip rewind \
        --batch-size 16 --lr 4e-3 --augment flip                    # run N's best recipe
    python tools/bench_quality.py --method l1_per_flop --min-density 0.375 --prune-epochs 0 \
        --prune-events 8 --after-strip rewind --batch-size 16 --lr 4e-3 --augment flip
                                        # run T: 8 events over the first half epoch
    python tools/bench_quality.py --method rd_prune --min-density 0.25 \
        --options criterion=gates              # CAMP-HiVe's gates inside RDPrune's allocation
    python tools/bench_quality.py --method sosp_h,l1_per_flop --options per_flop=True \
        --min-density 0.25                     # ranked per FLOP (run O); l1_per_flop has no options
    python tools/bench_quality.py --report                          # table + plots
    python tools/bench_quality.py --report --results quality_runL,quality_runM \
        --match b16_lr0.004 --plots out/img                         # one recipe's runs
    python tools/bench_quality.py --plan all --images 1024 --epochs 1 --results quality_dry
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pathlib
import re
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import bench_common as bc  # noqa: E402
import tfprune  # noqa: E402
from tfprune.criteria.camp_hive import CampHiVeSaliency  # noqa: E402
from tfprune.criteria.sosp import SOSPSaliency  # noqa: E402
from tfprune.errors import DataError, InvalidPruningArgumentError  # noqa: E402

# "l1" ranks every channel of the network on one scale (global), "l1_uniform" removes the same
# fraction of every group (Li et al. 2017's setting): the two usual L1 baselines;
# "l1_normalized" ranks each channel's L1 over its group's mean (tfprune's default allocation
# at channel granularity, which taylor, random, camp_hive and sosp_h use too);
# "l1_per_flop" ranks that normalized L1 per FLOP its removal saves (the allocation of
# `SOSPH(per_flop=True)` with L1's criterion).
# "gates_uniform" composes CAMP-HiVe's channel-gate saliency (`diagonal="gates"`) with
# l1_uniform's allocation, without the merge: the criterion alone against L1's.
CHANNEL_METHODS = ("l1", "camp_hive", "sosp_h", "rd_prune", "taylor", "random", "l1_uniform",
                   "l1_normalized", "l1_per_flop", "gates_uniform")
WEIGHT_METHODS = ("rd_prune", "magnitude")
#: The same architecture made narrower and trained from scratch.
NARROW_METHODS = ("narrow", "narrow_ft")
REFERENCE_METHODS = ("dense", "dense_ft") + NARROW_METHODS
#: Reference models trained with the protocol's own recipe and batch (`dense_ft` fine-tunes).
PROTOCOL_TRAINED = ("dense", "narrow")
METHODS = CHANNEL_METHODS + ("magnitude",) + REFERENCE_METHODS
LABELS = {"l1": "L1 magnitude (global)", "l1_uniform": "L1 magnitude (uniform)",
          "l1_normalized": "L1 magnitude (normalized)",
          "l1_per_flop": "L1 magnitude (normalized, per FLOP)",
          "camp_hive": "CAMP-HiVe", "sosp_h": "SOSP-H",
          "rd_prune": "RDPrune", "taylor": "Taylor", "random": "random",
          "gates_uniform": "gate curvature (uniform)",
          "magnitude": "global magnitude", "dense": "dense", "dense_ft": "dense, fine-tuned",
          "narrow": "narrow from scratch",
          "narrow_ft": "narrow from scratch, 30 epochs + fine-tuned"}
L1_METHODS = ("l1", "l1_uniform", "l1_normalized", "l1_per_flop")
#: Methods whose constructor takes `RunSpec.options` (`--options`; the L1 methods, e.g.
#: `merge_rule=regression` with `--calibration`: the engine's fold, criterion L1; Taylor and
#: random, e.g. `allocation=uniform`).
OPTION_METHODS = ("camp_hive", "sosp_h", "rd_prune", "gates_uniform", "taylor",
                  "random") + L1_METHODS
#: Rankings inside RDPrune's units beyond `tfprune.criteria.get`'s names (`--options
#: criterion=gates`): CAMP-HiVe's channel-gate saliency and SOSP-H's, in the RD allocation.
RD_CRITERIA = {"gates": lambda: CampHiVeSaliency("gates"), "sosp": SOSPSaliency}
#: Allocations beyond `tfprune.allocation.get`'s names (`--options allocation=...`):
#: `per_unit_cost_mean` is what `SOSPH(per_flop=True)` ranks with (each group's saliencies
#: over their mean, then per unit of cost saved), counting the budget that binds.
ALLOCATIONS = {"per_unit_cost_mean": lambda: tfprune.allocation.GlobalRanking(
    per_unit_cost=True, normalize="mean")}
#: Calibration images per method by default (the L1 methods take none unless `--calibration`).
CALIBRATION_IMAGES = {"camp_hive": 128, "sosp_h": 1024, "rd_prune": 1024, "taylor": 1024,
                      "gates_uniform": 128, **dict.fromkeys(L1_METHODS, 0)}
DEFAULT_EPOCHS = 10
#: Clean training images, and images per batch, of the BatchNorm statistics re-estimated at
#: the end of every run (`tfprune.recalibrate_batchnorm`; `--recalibrate 0` skips it).
RECALIBRATION_IMAGES = 10_000
RECALIBRATION_BATCH = 250
#: Epochs (at the start of the fine-tuning) over which the methods prune.
PRUNE_EPOCHS = 5
#: Learning rates of the stripped model's epochs (`RunSpec.after_strip`).
AFTER_STRIP = ("continue", "rewind")

#: Softmax temperature of the runs that distil from the dense model (`RunSpec.distill`).
DISTILL_TEMPERATURE = 4.0

# The priority order of the sweep: 25% FLOPs, 50% FLOPs, then weight granularity.
PLANS = {
    "a": [("dense", "channel", 1.0), ("dense_ft", "channel", 1.0)]
         + [(m, "channel", 0.25) for m in CHANNEL_METHODS],
    "b": [(m, "channel", 0.5) for m in CHANNEL_METHODS],
    "c": [(m, "weight", 0.9) for m in WEIGHT_METHODS],
}
PLANS["all"] = PLANS["a"] + PLANS["b"] + PLANS["c"]

# Figures of BENCHMARK_PROTOCOL.md (another run of the same protocol), drawn beside ours.
PROTOCOL_REFERENCE = (
    {"label": "dense (protocol)", "flops_fraction": 1.0, "top1": 78.50},
    {"label": "tfmot 75% sparsity +5 ep (protocol)", "flops_fraction": 1.0, "top1": 76.70},
    {"label": "half width from scratch, 30 ep (protocol)", "flops_fraction": 0.2496,
     "top1": 70.25},
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One benchmark run.

    Args:
        method: one of `METHODS`.
        granularity: `"channel"` (the target is a FLOPs fraction kept) or `"weight"` (the
            target is a sparsity).
        target: FLOPs fraction kept in (0, 1], or sparsity in (0, 1).
        epochs: fine-tuning epochs after the 30 dense ones.
        seed: seed of the data stream, the calibration draw and the methods' random draws.
        min_density: fraction of every group's channels (kernel's weights) kept.
        prune_epochs: the first epochs, during which the methods prune (0: once, before
            the first step); at most `epochs`.
        prune_events: with `prune_epochs=0`, prune gradually in this many events over the
            first half of the first epoch instead of once (0 or 1: once). Part of the run's
            name when > 1.
        options: keyword arguments of the method (`OPTION_METHODS`), `"name=value,..."`;
            they are part of the run's name.
        calibration: calibration images of a method that takes them (`CALIBRATION_IMAGES`);
            None: the method's default there. Part of the run's name when given.
        distill: weight `alpha` of knowledge distillation from the dense model during the
            pruning and fine-tuning epochs (`tfprune.Distiller`, temperature
            `DISTILL_TEMPERATURE`); 0: none. Part of the run's name when given.
        after_strip: the learning rate of the stripped model's epochs (channel
            granularity): `"continue"` the run's cosine decay where the pruning epochs left
            it (the protocol), or `"rewind"` it: a new cosine decay from the peak
            (`bench_common.FINE_TUNE_LR`) to 0 over the remaining epochs. Part of the run's
            name when `"rewind"`.
        batch_size: images per step of the fine-tuning epochs (`dense` and `narrow` train
            with the protocol's). Part of the run's name when not the protocol's 128.
        lr: peak learning rate of the fine-tuning epochs' cosine decays (the rewound one
            after strip too); `bench_common.FINE_TUNE_LR` (2e-3, the dense peak) by default.
            Part of the run's name when not the default.
        augment: augmentation of the fine-tuning epochs' images (`bench_common.AUGMENTATIONS`):
            the protocol's flip and translation (default), `"flip"` alone, or `"none"`.
            Part of the run's name when not the protocol's.
        max_params: with a FLOPs target (channel granularity), also keep at most this fraction
            of the dense parameters (`tfprune.Target(flops=target, params=max_params)`): flash is
            what a microcontroller runs out of first. None: FLOPs alone. Part of the run's
            name when given.

    Example:

    ```python
    spec = RunSpec("camp_hive", "channel", 0.25)
    spec.name   # 'camp_hive_channel_flops0.25_e10_p5_s0'
    ```
    """

    method: str
    granularity: str = "channel"
    target: float = 0.25
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    min_density: float = 0.0
    prune_epochs: int = PRUNE_EPOCHS
    options: str = ""
    calibration: Optional[int] = None
    distill: float = 0.0
    after_strip: str = "continue"
    batch_size: int = bc.PROTOCOL_BATCH
    lr: float = bc.FINE_TUNE_LR
    augment: str = "protocol"
    prune_events: int = 0
    max_params: Optional[float] = None

    @property
    def calibration_images(self) -> int:
        """Calibration images the method gets (0: it takes none)."""
        if self.calibration is not None:
            return self.calibration
        return CALIBRATION_IMAGES.get(self.method, 0)

    def keyword_arguments(self) -> dict:
        """`options` (`"merge=False,hutchinson_samples=32"`) as the method's keyword arguments."""
        out = {}
        for item in filter(None, (p.strip() for p in self.options.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip().isidentifier():
                raise InvalidPruningArgumentError(
                    f"options={self.options!r}: expected comma-separated name=value pairs")
            try:
                out[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = value.strip()
        return out

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidPruningArgumentError(
                f"method={self.method!r}: accepted are {', '.join(METHODS)}")
        accepted = WEIGHT_METHODS if self.granularity == "weight" else \
            CHANNEL_METHODS + REFERENCE_METHODS if self.granularity == "channel" else ()
        if self.method not in accepted:
            raise InvalidPruningArgumentError(
                f"method {self.method!r} with granularity={self.granularity!r}: channel "
                f"granularity takes {', '.join(CHANNEL_METHODS + REFERENCE_METHODS)}, weight "
                f"granularity takes {', '.join(WEIGHT_METHODS)}")
        high_ok = self.granularity == "channel"
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or \
                not (0 < self.target < 1 or (high_ok and self.target == 1)):
            raise InvalidPruningArgumentError(
                f"target={self.target!r}: a FLOPs fraction in (0, 1] (channel) or a sparsity in "
                "(0, 1) (weight)")
        if self.method in ("dense", "dense_ft") and self.target != 1:
            raise InvalidPruningArgumentError(
                f"method {self.method!r} has target 1.0; got {self.target}")
        if isinstance(self.min_density, bool) or not isinstance(self.min_density, (int, float)) \
                or not 0 <= self.min_density < 1:
            raise InvalidPruningArgumentError(
                f"min_density={self.min_density!r}: a number in [0, 1)")
        for field, low in (("epochs", 1), ("seed", 0), ("prune_epochs", 0),
                           ("batch_size", 1), ("prune_events", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidPruningArgumentError(f"{field}={value!r}: an integer >= {low}")
        if self.options and self.method not in OPTION_METHODS:
            raise InvalidPruningArgumentError(
                f"options={self.options!r}: only {', '.join(OPTION_METHODS)} take options")
        extra = set(self.keyword_arguments()) - {"allocation"}
        if self.method in ("taylor", "random") and extra:
            raise InvalidPruningArgumentError(
                f"options={self.options!r}: {self.method} takes only allocation=...")
        if self.calibration is not None and (
                self.method not in CALIBRATION_IMAGES or isinstance(self.calibration, bool)
                or not isinstance(self.calibration, int) or self.calibration < 1):
            raise InvalidPruningArgumentError(
                f"calibration={self.calibration!r}: a number of images >= 1, for "
                f"{', '.join(CALIBRATION_IMAGES)} only")
        if isinstance(self.distill, bool) or not isinstance(self.distill, (int, float)) \
                or not 0 <= self.distill <= 1:
            raise InvalidPruningArgumentError(f"distill={self.distill!r}: a weight in [0, 1]")
        if self.distill and self.method in REFERENCE_METHODS:
            raise InvalidPruningArgumentError(
                f"distill={self.distill!r}: the pruning methods distil from the dense model; "
                f"{self.method!r} takes no distillation")
        if self.after_strip not in AFTER_STRIP:
            raise InvalidPruningArgumentError(
                f"after_strip={self.after_strip!r}: accepted are {', '.join(AFTER_STRIP)}")
        if self.after_strip != "continue" and (self.method in REFERENCE_METHODS
                                               or self.granularity != "channel"):
            raise InvalidPruningArgumentError(
                f"after_strip={self.after_strip!r}: only pruning runs at channel granularity "
                f"are stripped; {self.method!r} at {self.granularity!r} granularity is not")
        if self.batch_size != bc.PROTOCOL_BATCH and self.method in PROTOCOL_TRAINED:
            raise InvalidPruningArgumentError(
                f"batch_size={self.batch_size}: {self.method!r} is trained with the protocol's "
                f"batch of {bc.PROTOCOL_BATCH}; only the fine-tuning runs take another")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) \
                or not 0 < self.lr < 1:
            raise InvalidPruningArgumentError(f"lr={self.lr!r}: a learning rate in (0, 1)")
        if self.lr != bc.FINE_TUNE_LR and self.method in PROTOCOL_TRAINED:
            raise InvalidPruningArgumentError(
                f"lr={self.lr!r}: {self.method!r} is trained with the protocol's rate; only "
                "the fine-tuning runs take another")
        if self.augment not in bc.AUGMENTATIONS:
            raise InvalidPruningArgumentError(
                f"augment={self.augment!r}: accepted are {', '.join(bc.AUGMENTATIONS)}")
        if self.augment != "protocol" and self.method in PROTOCOL_TRAINED:
            raise InvalidPruningArgumentError(
                f"augment={self.augment!r}: {self.method!r} is trained with the protocol's "
                "augmentation; only the fine-tuning runs take another")
        if self.prune_events > 1 and (self.prune_epochs or self.method in REFERENCE_METHODS):
            raise InvalidPruningArgumentError(
                f"prune_events={self.prune_events}: events within the first epoch are for "
                "pruning runs with prune_epochs=0 (pruning over whole epochs has two events "
                "per epoch)")
        cap = self.max_params
        if cap is not None and (
                isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap <= 1
                or self.granularity != "channel"
                or self.method in REFERENCE_METHODS):
            raise InvalidPruningArgumentError(
                f"max_params={cap!r}: a fraction of the dense parameters in (0, 1], for pruning "
                "runs at channel granularity")
        if self.prune_epochs > self.epochs:
            raise InvalidPruningArgumentError(
                f"prune_epochs={self.prune_epochs} > epochs={self.epochs}: pruning happens "
                "within the fine-tuning epochs")

    @property
    def name(self) -> str:
        if self.method == "dense":
            return f"dense_s{self.seed}"
        if self.method == "dense_ft":
            return f"dense_ft_e{self.epochs}_s{self.seed}"
        kind = "flops" if self.granularity == "channel" else "sparsity"
        budget = "" if self.max_params is None else f"_params{self.max_params:g}"
        floor = f"_md{self.min_density:g}" if self.min_density else ""
        pace = "" if self.method in NARROW_METHODS else f"_p{self.prune_epochs}"
        pace += f"_ev{self.prune_events}" if self.prune_events > 1 else ""
        extra = "".join(f"_{k}{v}" for k, v in sorted(self.keyword_arguments().items()))
        extra += "" if self.calibration is None else f"_cal{self.calibration}"
        extra += f"_kd{self.distill:g}" if self.distill else ""
        extra += "_rewind" if self.after_strip == "rewind" else ""
        extra += bc.recipe_suffix(self.batch_size, self.lr, self.augment)
        return (f"{self.method}_{self.granularity}_{kind}{self.target:g}{budget}{floor}"
                f"_e{self.epochs}{pace}{extra}_s{self.seed}")


@keras.saving.register_keras_serializable(package="bench_quality")
class ContinuedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` read `offset` steps further on.

    A stripped model gets a new optimizer whose step count starts at 0; this lets its
    learning rate go on from where the pruning phase left the run's schedule.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule`.
        offset: optimizer steps already taken on the schedule (`>= 0`).

    Example:

    ```python
    base = keras.optimizers.schedules.CosineDecay(5e-4, decay_steps=1950)
    rest = ContinuedSchedule(base, offset=390)
    assert float(rest(0)) == float(base(390))
    ```
    """

    def __init__(self, schedule, offset: int):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise InvalidPruningArgumentError(
                f"schedule must be a keras LearningRateSchedule; got {schedule!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidPruningArgumentError(f"offset={offset!r}: an integer >= 0")
        self.schedule = schedule
        self.offset = offset

    def __call__(self, step):
        return self.schedule(step + self.offset)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"])


def calibration_set(x_train: np.ndarray, y_train: np.ndarray, seed: int, count: int = 1024):
    """`count` training images (float32, no augmentation) and labels, a seeded draw."""
    order = np.random.default_rng(seed + 1000).permutation(len(x_train))[:count]
    return x_train[np.sort(order)].astype("float32"), np.asarray(y_train[np.sort(order)])


def recalibration_images(x_train: np.ndarray, seed: int, count: int) -> np.ndarray:
    """`count` training images (float32, no augmentation), a seeded draw, for the BatchNorm
    statistics."""
    order = np.random.default_rng(seed + 2000).permutation(len(x_train))[:count]
    return x_train[np.sort(order)].astype("float32")


def make_pruning(spec: RunSpec, steps: int, calibration):
    """The pruning callback of `spec`; `steps` is the number of optimizer steps of an epoch."""
    half = max(1, steps // 2)
    events, gap = 2 * spec.prune_epochs, half  # events, and the steps between them
    if spec.prune_epochs:
        gradual = tfprune.PolynomialDecay(begin_step=0, end_step=(events - 1) * half,
                                          frequency=half)
    elif spec.prune_events > 1:  # within the first half epoch; step 0 is the ramp's start
        events, gap = spec.prune_events, max(1, half // spec.prune_events)
        gradual = tfprune.PolynomialDecay(begin_step=0, end_step=events * gap, frequency=gap)
    else:
        gradual = tfprune.OneShot(0)
    cal = calibration[0][:spec.calibration_images], calibration[1][:spec.calibration_images]
    common = {"granularity": spec.granularity, "seed": spec.seed,
              "min_density": spec.min_density}
    options = spec.keyword_arguments()
    if spec.method == "rd_prune" and options.get("criterion") in RD_CRITERIA:
        options["criterion"] = RD_CRITERIA[options["criterion"]]()
    if options.get("allocation") in ALLOCATIONS:
        options["allocation"] = ALLOCATIONS[options["allocation"]]()
    if spec.granularity == "weight":  # magnitude, or RDPrune below
        target = tfprune.Target(sparsity=spec.target)
        if spec.method == "magnitude":
            return tfprune.MagnitudePruning(target, gradual, "l1", allocation="global",
                                            verbose=0, **common)
    else:
        target = tfprune.Target(flops=spec.target, params=spec.max_params)
    if spec.method in L1_METHODS:
        allocation = {"l1": "global", "l1_uniform": "uniform", "l1_normalized": "normalized",
                      "l1_per_flop": ALLOCATIONS["per_unit_cost_mean"]()}[spec.method]
        return tfprune.MagnitudePruning(target, gradual, "l1", allocation=allocation, verbose=0,
                                        calibration_data=cal if spec.calibration_images else None,
                                        **common, **options)
    if spec.method == "random":
        return tfprune.MagnitudePruning(target, gradual, "random", verbose=0, **common,
                                        **options)
    if spec.method == "taylor":
        return tfprune.MagnitudePruning(target, gradual, "taylor", calibration_data=cal,
                                        verbose=0, **common, **options)
    if spec.method == "gates_uniform":
        return tfprune.PruningCallback(CampHiVeSaliency("gates", **options), target, gradual,
                                       allocation="uniform", calibration_data=cal, verbose=0,
                                       **common)
    if spec.method == "camp_hive":
        return tfprune.CampHiVe(target, gradual, calibration_data=cal, verbose=1, **common,
                                **options)
    if spec.method == "sosp_h":
        return tfprune.SOSPH(target, calibration_data=cal, schedule=gradual, verbose=1,
                             seed=spec.seed, min_density=spec.min_density, **options)
    return tfprune.RDPrune(target, cal, verbose=1, **common, **{**_rounds(events, gap), **options})


def _rounds(events: int, steps: int) -> dict:
    """RDPrune's arguments for `events` rounds `steps` apart (one round for none); a run's
    `rounds=` option overrides the count."""
    return {"rounds": max(1, events), "round_steps": steps}


def kept_channels(model) -> Dict[str, int]:
    """Channels of each prunable group, keyed by the group's producing layers."""
    return {"+".join(m.layer for m in g.producers): int(g.size)
            for g in tfprune.channel_groups(model) if g.prunable}


def _completed(results: str, results_dir) -> Dict[str, dict]:
    path = pathlib.Path(results_dir or bc.CACHE_DIR / "results") / f"{results}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    return {r["run"]: r for r in rows if "run" in r}


def model_dir(results: str) -> pathlib.Path:
    """Where the stripped models of `results` go: `cache/quality/` (other results: a subfolder)."""
    base = bc.CACHE_DIR / "quality"
    return base if results == "quality" else base / results


def run(spec: RunSpec, data, dense_path, *, results: str = "quality", results_dir=None,
        models_dir=None, eval_data=None, deploy: bool = True,
        recalibrate: int = RECALIBRATION_IMAGES,
        log=sys.stdout) -> dict:
    """Prunes and fine-tunes (or trains, for `narrow`) one run; records and returns its row.

    A run whose row is already in `<results>.json` is not run again: its row is returned.

    Args:
        spec: the run.
        data: `((x_train, y_train), (x_test, y_test))`.
        dense_path: the trained dense `.keras` model (loaded afresh; never modified).
        results: results file stem (`bench_common.append_result`).
        results_dir: folder of the results file (default `cache/results/`).
        models_dir: where the stripped model is saved (default `model_dir(results)`).
        eval_data: labelled data for int8 top-1 (the lossless 200), or None.
        deploy: measure the deployment figures (`bench_common.deployment_figures`).
        recalibrate: clean training images on which every BatchNormalization layer's
            statistics are re-estimated at the end (0: none); `top1` is then measured after,
            `top1_as_trained` before.
        log: where progress lines go.

    Returns:
        The row.

    Example:

    ```python
    row = run(RunSpec("l1", "channel", 0.25), bc.load_cifar10(), bc.dense_resnet8_path())
    ```
    """
    done = _completed(results, results_dir)
    if spec.name in done:
        print(f"{spec.name}: done already, skipped", file=log, flush=True)
        return done[spec.name]
    (x_train, y_train), (x_test, y_test) = data
    steps = bc.steps_per_epoch(len(x_train), spec.batch_size)
    first, last = bc.PROTOCOL_DENSE_EPOCHS, bc.PROTOCOL_DENSE_EPOCHS + spec.epochs
    dense = keras.models.load_model(dense_path)
    dense_macs = tfprune.profile(dense).macs
    epoch_log = bc.EpochLog(stream=log)
    print(f"{spec.name}: start", file=log, flush=True)
    t0, c0 = time.perf_counter(), bc.EpochLog.cpu_seconds()
    row = {"run": spec.name, **dataclasses.asdict(spec), "train_images": len(x_train),
           "dense_model": str(dense_path)}
    pruning = None
    if spec.method == "dense":
        small = dense
    elif spec.method == "dense_ft":
        small = dense
        bc.fine_tune(dense, data, epochs=last, initial_epoch=first, seed=spec.seed,
                     lr=spec.lr, batch_size=spec.batch_size, callbacks=[epoch_log], verbose=0,
                     augment=spec.augment)
        row.update(epoch_log=epoch_log.epochs, run_wall_s=round(time.perf_counter() - t0, 1),
                   run_cpu_s=round(bc.EpochLog.cpu_seconds() - c0, 1))
    elif spec.method == "narrow_ft":
        # The narrow model trained with the protocol for the dense model's 30 epochs, then
        # fine-tuned for `epochs` with the pruning runs' recipe (a new cosine decay from their
        # peak rate, their batch): the training a pruned model gets, with the architecture
        # fixed from the start.
        mult = bc.width_mult_for_flops(spec.target)
        small = bc.narrow_resnet8(mult, epochs=first, seed=spec.seed, log_stream=log)
        info = bc.model_info(bc.narrow_resnet8_path(mult, first, spec.seed))
        row["top1_before_fine_tuning"] = round(bc.evaluate(small, x_test, y_test), 2)
        t1, c1 = time.perf_counter(), bc.EpochLog.cpu_seconds()
        bc.fine_tune(small, data, epochs=last, initial_epoch=first, seed=spec.seed,
                     lr=spec.lr, batch_size=spec.batch_size, callbacks=[epoch_log], verbose=0,
                     augment=spec.augment)
        row.update(width_mult=mult, widths=info["widths"], epoch_log=epoch_log.epochs,
                   run_wall_s=round(time.perf_counter() - t1, 1),
                   run_cpu_s=round(bc.EpochLog.cpu_seconds() - c1, 1))
    elif spec.method == "narrow":
        # The same architecture made narrower, trained from scratch for 30 + epochs epochs.
        mult = bc.width_mult_for_flops(spec.target)
        small = bc.narrow_resnet8(mult, epochs=last, seed=spec.seed, log_stream=log)
        info = bc.model_info(bc.narrow_resnet8_path(mult, last, spec.seed))
        row.update(width_mult=mult, widths=info["widths"], epoch_log=info["epoch_log"],
                   run_wall_s=info["train_wall_s"], run_cpu_s=info["train_cpu_s"])
    else:
        calibration = calibration_set(x_train, y_train, spec.seed,
                                      max(1024, spec.calibration_images))
        lr = keras.optimizers.schedules.CosineDecay(spec.lr,
                                                    decay_steps=spec.epochs * steps)
        pruning = make_pruning(spec, steps, calibration)
        prune_epochs = last if spec.granularity == "weight" else \
            first + max(1, spec.prune_epochs)
        teacher = keras.models.load_model(dense_path) if spec.distill else None

        def trained(model):  # the model `fit` trains: `model`, or a distiller around it
            if teacher is None:
                return model
            return tfprune.Distiller(model, teacher, temperature=DISTILL_TEMPERATURE,
                                     alpha=spec.distill)

        fitted = trained(dense)
        bc.fine_tune(fitted, data, epochs=prune_epochs, initial_epoch=first,
                     seed=spec.seed, lr=lr, batch_size=spec.batch_size,
                     callbacks=[pruning, epoch_log], verbose=0, augment=spec.augment)
        row["achieved"] = {k: round(float(v), 5) for k, v in pruning.achieved().items()}
        small = tfprune.strip(dense)
        if prune_epochs < last:
            # Fresh Adam state. "continue": same peak and schedule position (the steps of
            # the pruning epochs already taken), what a user who strips right after pruning
            # can do; "rewind": the peak again, decayed to 0 over the remaining epochs.
            if spec.after_strip == "rewind":
                after = keras.optimizers.schedules.CosineDecay(
                    spec.lr, decay_steps=(last - prune_epochs) * steps)
            else:
                after = ContinuedSchedule(lr, (prune_epochs - first) * steps)
            row["strip_lr"] = float(keras.ops.convert_to_numpy(after(0)))
            fitted = trained(small)
            bc.fine_tune(fitted, data, epochs=last, initial_epoch=prune_epochs,
                         seed=spec.seed, lr=after, batch_size=spec.batch_size,
                         callbacks=[epoch_log], verbose=0, augment=spec.augment)
        # The rate the schedule had reached after the last step: 0 at the end of the
        # cosine decay, wherever the run was stripped.
        row["final_lr"] = float(keras.ops.convert_to_numpy(fitted.optimizer.learning_rate))
        pruning_epochs = epoch_log.epochs[:prune_epochs - first]
        row.update(epoch_log=epoch_log.epochs,
                   prune_epoch_wall_s=epoch_log.epochs[0]["wall_s"],
                   prune_epoch_cpu_s=epoch_log.epochs[0]["cpu_s"],
                   pruning_phase_wall_s=round(sum(e["wall_s"] for e in pruning_epochs), 1),
                   pruning_phase_cpu_s=round(sum(e["cpu_s"] for e in pruning_epochs), 1),
                   run_wall_s=round(time.perf_counter() - t0, 1),
                   run_cpu_s=round(bc.EpochLog.cpu_seconds() - c0, 1),
                   events=[e.step for e in pruning.events if e.skipped is None],
                   calibration_images=spec.calibration_images,
                   pruning_config=_config(pruning))
        records = getattr(pruning, "records", None)
        if records:
            row["event_seconds"] = [{k: round(float(v), 2) for k, v in r.seconds.items()}
                                    for r in records]
    top1 = round(bc.evaluate(small, x_test, y_test), 2)
    if recalibrate:
        # The protocol's last step for every run, dense included: BatchNorm statistics
        # re-estimated on clean training images (`tfprune.recalibrate_batchnorm`).
        t1 = time.perf_counter()
        tfprune.recalibrate_batchnorm(small, recalibration_images(x_train, spec.seed,
                                                                  recalibrate),
                                      batch_size=RECALIBRATION_BATCH, verbose=0)
        row.update(top1_as_trained=top1,
                   bn_recalibration={"images": min(recalibrate, len(x_train)),
                                     "batch_size": RECALIBRATION_BATCH,
                                     "wall_s": round(time.perf_counter() - t1, 1)})
        top1 = round(bc.evaluate(small, x_test, y_test), 2)
    profile = tfprune.profile(small)
    row.update(top1=top1, params=profile.params,
               macs=profile.macs, flops_fraction=round(profile.macs / dense_macs, 4),
               kept_channels=kept_channels(small))
    folder = pathlib.Path(models_dir or model_dir(results))
    if spec.method not in ("dense", "dense_ft"):
        # Saved uncompiled, as `tfprune.strip` returns it: the fine-tuning optimizer's
        # schedule is this script's class, which a reader of the file should not need.
        plain = keras.Model.from_config(small.get_config())
        plain.set_weights(small.get_weights())
        path = bc._atomic_write(folder / f"{spec.name}.keras", lambda p: plain.save(p))
        row["model_path"] = str(path)
    if deploy:
        row["deployment"] = bc.deployment_figures(
            small, folder / "export" / spec.name,
            bc.representative_images(x_train), eval_data=eval_data, name="model")
    row["machine"] = bc.machine_info()
    bc.append_result(results, row, results_dir)
    print(json.dumps({k: row.get(k) for k in ("run", "top1", "flops_fraction", "achieved",
                                              "prune_epoch_cpu_s", "run_cpu_s")}),
          file=log, flush=True)
    return row


def _config(pruning) -> dict:
    config = pruning.get_config()
    return json.loads(json.dumps(config, default=repr))


# --- side-by-side latency -------------------------------------------------------------------


def measure_latencies(flatbuffers: Dict[str, pathlib.Path], reference: str, rounds: int = 5,
                      repeat: int = 20, log=sys.stdout) -> Dict[str, dict]:
    """TFLite Micro time of int8 flatbuffers measured side by side, with ratios to `reference`.

    The time of a run's row was measured when its run ended, under whatever load the shared
    machine had then; ratios between rows measured minutes apart are not reliable. Here every
    flatbuffer is timed in each of `rounds` rounds (median of `repeat` invokes, at its measured
    arena), one after the other, and each ratio is the median over rounds of its time over
    `reference`'s time in the same round.

    Args:
        flatbuffers: name -> path of an int8 `.tflite` file.
        reference: the name the ratios divide by.
        rounds: interleaved rounds.
        repeat: invokes per measurement.
        log: where progress lines go.

    Returns:
        name -> `{"micro_ms": median ms, "ratio": median ratio, "rounds_ms": [...]}`.

    Example:

    ```python
    measure_latencies({"dense": dense_tflite, "small": small_tflite}, "dense")
    ```
    """
    from tfprune import export

    if reference not in flatbuffers:
        raise DataError(f"reference {reference!r} is not among the flatbuffers "
                        f"({', '.join(flatbuffers)})")
    models = {name: pathlib.Path(path).read_bytes() for name, path in flatbuffers.items()}
    arenas = {name: export.measure_arena(b).bytes for name, b in models.items()}
    times = {name: [] for name in models}
    for r in range(rounds):
        for name, b in models.items():
            times[name].append(export.measure_latency(b, "micro", repeat=repeat,
                                                      arena_size=arenas[name]))
        print(f"latency round {r + 1}/{rounds}", file=log, flush=True)
    ref = times[reference]
    return {name: {"micro_ms": round(float(np.median(t)), 3),
                   "ratio": round(float(np.median(np.divide(t, ref))), 4),
                   "rounds_ms": [round(v, 3) for v in t], "arena_bytes": arenas[name]}
            for name, t in times.items()}


def latency_flatbuffers(rows: Sequence[dict]) -> Dict[str, pathlib.Path]:
    """The int8 flatbuffers of `rows` (by run) and of the tfmot baselines in `cache/tfmot/`."""
    found = {}
    for r in rows:
        folder = (r.get("deployment") or {}).get("export_dir")
        if folder and (pathlib.Path(folder) / "model_int8.tflite").is_file():
            found[r["run"]] = pathlib.Path(folder) / "model_int8.tflite"
    for path in sorted((bc.CACHE_DIR / "tfmot").glob("*/model_int8.tflite")):
        found[f"tfmot_{path.parent.name}"] = path
    return found


# --- report --------------------------------------------------------------------------------


def _pct(value, dense) -> str:
    return "" if value is None or not dense else f" ({100.0 * value / dense:.0f}%)"


def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def report_table(rows: Sequence[dict], latency: Optional[Dict[str, dict]] = None) -> str:
    """The markdown table of `rows`, with ratios to the dense row's figures.

    With `latency` (from `measure_latencies`), the TFLite Micro column shows those
    side-by-side times and ratios instead of the times measured at the end of each run.
    """
    dense = next((r for r in rows if r["method"] == "dense"), None)
    dd = (dense or {}).get("deployment", {})
    head = ("| run | target | FLOPs kept | float top-1 | TFLM int8 top-1 (200) | params | MACs | "
            "int8 bytes | arena bytes | TFLM ms | pruning epoch CPU s | run CPU s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (r["granularity"], -r["target"], order[r["method"]])):
        d = r.get("deployment", {})
        kind = "FLOPs" if r["granularity"] == "channel" else "sparsity"
        target = "-" if r["method"] in ("dense", "dense_ft") else f"{kind} {r['target']:g}"
        lines.append(
            f"| {label(r)} (`{r['run']}`) | {target} | {r['flops_fraction']:.3f} | "
            f"{r['top1']:.2f} | {_fmt(d.get('top1_micro_int8'), 1)} | {r['params']:,} | "
            f"{r['macs'] / 1e6:.2f} M | "
            f"{_fmt(d.get('int8_bytes'))}{_pct(d.get('int8_bytes'), dd.get('int8_bytes'))} | "
            f"{_fmt(d.get('arena_bytes'))}{_pct(d.get('arena_bytes'), dd.get('arena_bytes'))} | "
            f"{_micro(r, d, dd, latency)} | "
            f"{_fmt(r.get('prune_epoch_cpu_s'), 0)} | {_fmt(r.get('run_cpu_s'), 0)} |")
    return "\n".join(lines)


def label(row: dict) -> str:
    """The method's name in tables and plots, with the run's options, its calibration images
    when they are not the method's default, its per-group floor, its parameter budget, its
    distillation weight, a rewound learning rate after strip, a pruning phase other than the
    default 5 epochs, a batch other than the protocol's, a peak learning rate other than the
    default and an augmentation other than the protocol's if it has them."""
    floor = row.get("min_density") or 0
    extra = [o.strip() for o in (row.get("options") or "").split(",") if o.strip()]
    images = row.get("calibration")
    if images is not None and images != CALIBRATION_IMAGES.get(row["method"]):
        extra.append(f"{images:,} images")
    if floor:
        extra.append(f"min_density {floor:g}")
    if row.get("max_params") is not None:
        extra.append(f"params <= {row['max_params']:g} of the dense model's")
    if row.get("distill"):
        extra.append(f"distilled, alpha {row['distill']:g}")
    if row.get("after_strip", "continue") != "continue":
        extra.append("learning rate rewound after strip")
    if row["method"] not in REFERENCE_METHODS and \
            row.get("prune_epochs", PRUNE_EPOCHS) != PRUNE_EPOCHS:
        events = row.get("prune_events") or 0
        extra.append(f"pruned in {events} events over the first half epoch" if events > 1
                     else "pruned once, before the first step" if row["prune_epochs"] == 0
                     else f"pruning over {row['prune_epochs']} epochs")
    if row.get("batch_size", bc.PROTOCOL_BATCH) != bc.PROTOCOL_BATCH:
        extra.append(f"batch {row['batch_size']}")
    if row.get("lr", bc.FINE_TUNE_LR) != bc.FINE_TUNE_LR:
        extra.append(f"peak rate {row['lr']:g}")
    if row.get("augment", "protocol") != "protocol":
        extra.append("flip only" if row["augment"] == "flip" else "no augmentation")
    return LABELS[row["method"]] + (f" ({', '.join(extra)})" if extra else "")


def configuration(row: dict) -> str:
    """The run's name without its seed: the rows of one configuration across seeds."""
    return re.sub(r"_s\d+$", "", row["run"])


def seed_summary(rows: Sequence[dict], min_seeds: int = 2) -> List[dict]:
    """Per configuration with at least `min_seeds` seeds: each seed's float top-1, the mean
    and the spread (max - min), in the order the configurations first appear."""
    found: Dict[str, List[dict]] = {}
    for r in rows:
        found.setdefault(configuration(r), []).append(r)
    out = []
    for config, mine in found.items():
        seeds = sorted({r.get("seed", 0) for r in mine})
        if len(seeds) < min_seeds:
            continue
        top1 = {r.get("seed", 0): r["top1"] for r in mine}
        values = [top1[s] for s in seeds]
        out.append({"configuration": config, "label": label(mine[0]),
                    "target": mine[0]["target"], "seeds": seeds,
                    "top1": values, "mean": float(np.mean(values)),
                    "spread": float(max(values) - min(values))})
    return out


def seed_table(rows: Sequence[dict]) -> str:
    """Markdown: the float top-1 of every configuration run with more than one seed."""
    lines = ["| configuration | seeds | float top-1 per seed | mean | spread |",
             "|---|---|---|---:|---:|"]
    for s in seed_summary(rows):
        lines.append(f"| {s['label']} (`{s['configuration']}`) | "
                     f"{', '.join(map(str, s['seeds']))} | "
                     f"{', '.join(f'{v:.2f}' for v in s['top1'])} | {s['mean']:.2f} | "
                     f"{s['spread']:.2f} |")
    return "\n".join(lines)


def _micro(row, d, dd, latency) -> str:
    if latency and row["run"] in latency:
        found = latency[row["run"]]
        return f"{found['micro_ms']:.2f} ({100 * found['ratio']:.0f}%)"
    return f"{_fmt(d.get('micro_ms'))}{_pct(d.get('micro_ms'), dd.get('micro_ms'))}"


def report_rows(stems: Sequence[str], results_dir=None) -> List[dict]:
    """The rows of the results files `stems`, in order, or a clear error naming a missing one."""
    base = pathlib.Path(results_dir or bc.CACHE_DIR / "results")
    rows = []
    for stem in stems:
        path = base / f"{stem}.json"
        if not path.is_file():
            raise DataError(f"no results file {path}: run tools/bench_quality.py with "
                            f"--results {stem} first")
        rows.extend(json.loads(path.read_text()))
    return rows


def _latest(rows: Sequence[dict]) -> List[dict]:
    """The last row of each run."""
    return list({r["run"]: r for r in rows if "run" in r}.values())


def select_rows(rows: Sequence[dict], pattern: Optional[str]) -> List[dict]:
    """The rows whose run name matches the regular expression `pattern`, and the dense rows.

    `None` keeps every row. The dense model is the reference of the table and the plots, so it
    stays whatever the pattern; a pattern that is not a regular expression is refused.
    """
    if pattern is None:
        return list(rows)
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise InvalidPruningArgumentError(
            f"--match {pattern!r}: not a regular expression ({e})") from None
    return [r for r in rows if r["method"] == "dense" or compiled.search(r["run"])]


def tfmot_references() -> List[dict]:
    """tfmot `prune_low_magnitude` runs of `cache/tfmot/` (same protocol, this machine)."""
    found = []
    for path in sorted((bc.CACHE_DIR / "tfmot").glob("*/result.json")):
        r = json.loads(path.read_text())
        found.append({"label": f"tfmot {r['sparsity_target']:.0%} sparsity +{r['epochs']} ep",
                      "flops_fraction": 1.0, "top1": r["top1"]})
    return found


def plot_accuracy_flops(rows: Sequence[dict], path) -> pathlib.Path:
    """Float top-1 against the FLOPs fraction: one marker per method and target (the mean over
    its seeds, a bar from the lowest to the highest seed), references beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"l1": "o", "l1_uniform": "h", "l1_normalized": "8", "l1_per_flop": "H",
               "camp_hive": "*", "sosp_h": "D", "rd_prune": "s", "taylor": "^", "random": "v",
               "dense": "P", "dense_ft": "p", "narrow": "X", "narrow_ft": "x", "gates_uniform": "d"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    channel = [r for r in rows if r["granularity"] == "channel" and r["method"] in markers]
    references = list(PROTOCOL_REFERENCE) + tfmot_references()
    # A collapsed run (tens of points below the others) would squash the rest: the axis
    # starts below the others and such runs are named at its bottom edge.
    tops = [r["top1"] for r in channel] + [ref["top1"] for ref in references]
    middle = float(np.median(tops)) if tops else 0.0
    floor = min([t for t in tops if t >= middle - 20] or [0.0]) - 3
    for name in dict.fromkeys(label(r) for r in channel):
        mine = [r for r in channel if label(r) == name]
        pts, low, high = [], [], []
        for target in sorted({r["target"] for r in mine}):
            seeds = [r for r in mine if r["target"] == target]
            top1 = [r["top1"] for r in seeds]
            pts.append((float(np.mean([r["flops_fraction"] for r in seeds])),
                        float(np.mean(top1))))
            low.append(pts[-1][1] - min(top1))
            high.append(max(top1) - pts[-1][1])
        marker = markers[mine[0]["method"]]
        line = ax.errorbar(*zip(*pts), yerr=[low, high] if any(low + high) else None,
                           marker=marker, markersize=10 if marker == "*" else 7, capsize=3,
                           mfc="none" if mine[0].get("min_density") else None,
                           linestyle="-" if len(pts) > 1 else "none", label=name).lines[0]
        for x, top1 in pts:
            if top1 < floor:
                ax.annotate(f"{name}: {top1:.1f}% (below)", (x, floor), xytext=(x + 0.03,
                            floor + 2.5), fontsize=7, color=line.get_color(),
                            arrowprops={"arrowstyle": "->", "color": line.get_color()})
    for ref in references:
        mine = "protocol" not in ref["label"]
        ax.plot(ref["flops_fraction"], ref["top1"], marker="s" if mine else "o", markersize=7,
                mfc="gray" if mine else "none", color="gray", linestyle="none")
        right = ref["flops_fraction"] > 0.6
        ax.annotate(ref["label"], (ref["flops_fraction"], ref["top1"]), fontsize=7,
                    color="gray", xytext=(-6 if right else 6, -3), textcoords="offset points",
                    ha="right" if right else "left")
    if any(t < floor for t in tops):
        ax.set_ylim(bottom=floor)
    ax.set_xlabel("FLOPs kept (fraction of the dense ResNet-8)")
    ax.set_ylabel("float top-1 on the 10k CIFAR-10 test images (%)")
    ax.set_title("ResNet-8 / CIFAR-10: channel pruning + fine-tuning\n(mean over seeds, "
                 "bars: their range)", fontsize=10)
    ax.grid(alpha=0.3)
    # Below the axes: the labels name options and recipes and would hide the points.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _save_figure(fig, path)


def plot_kept_channels(rows: Sequence[dict], path, target: float = 0.25) -> pathlib.Path:
    """Channels each group keeps, per configuration (its lowest seed), at `target` FLOPs,
    over the dense widths (when `rows` hold the dense model)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next((r for r in rows if r["method"] == "dense"), None)
    chosen = {}
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        if r["granularity"] == "channel" and r["target"] == target \
                and r["method"] in CHANNEL_METHODS + NARROW_METHODS:
            chosen.setdefault(configuration(r), r)
    chosen = list(chosen.values())
    reference = dense or (chosen[0] if chosen else {"kept_channels": {}})
    groups = list(reference["kept_channels"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(groups))
    if dense:
        ax.bar(x, [dense["kept_channels"][g] for g in groups], 0.9, color="none",
               edgecolor="gray", label="dense")
    width = 0.85 / max(1, len(chosen))
    for i, r in enumerate(chosen):
        values = list(r["kept_channels"].values())
        kept = [r["kept_channels"].get(g, values[j] if j < len(values) else 0)
                for j, g in enumerate(groups)]
        ax.bar(x - 0.425 + (i + 0.5) * width, kept, width, label=label(r))
    ax.set_xticks(x, [g.replace("+", "\n") for g in groups], fontsize=7)
    ax.set_ylabel("channels kept")
    ax.set_title(f"Channels kept per group at {target:.0%} of the dense FLOPs")
    # Below the axes, as in plot_accuracy_flops: long labels inside squeeze the bars.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return _save_figure(fig, path)


def _save_figure(fig, path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    bc._atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png",
                                                 bbox_inches="tight"))
    plt.close(fig)
    return path


# --- command line --------------------------------------------------------------------------


def specs_from_args(args) -> List[RunSpec]:
    """The runs the command line asks for, in order."""
    def spec(method, granularity, target):
        if method == "dense":
            return RunSpec(method, granularity, 1.0, 1, args.seed, prune_epochs=0)
        return RunSpec(method, granularity, 1.0 if method == "dense_ft" else target,
                       args.epochs, args.seed, args.min_density,
                       0 if method in REFERENCE_METHODS else args.prune_epochs,
                       args.options if method in OPTION_METHODS else "",
                       args.calibration if method in CALIBRATION_IMAGES else None,
                       0.0 if method in REFERENCE_METHODS else args.distill,
                       "continue" if method in REFERENCE_METHODS or granularity != "channel"
                       else args.after_strip,
                       bc.PROTOCOL_BATCH if method in PROTOCOL_TRAINED else args.batch_size,
                       bc.FINE_TUNE_LR if method in PROTOCOL_TRAINED else args.lr,
                       "protocol" if method in PROTOCOL_TRAINED else args.augment,
                       0 if method in REFERENCE_METHODS else args.prune_events,
                       None if method in REFERENCE_METHODS else args.max_params)

    if args.plan:
        return [spec(m, g, t) for plan in args.plan.split(",") for m, g, t in PLANS[plan]]
    methods = [m for m in args.method.split(",") if m]
    if args.sparsity is not None:
        return [spec(m, "weight", s) for s in args.sparsity for m in methods]
    return [spec(m, "channel", f) for f in args.flops for m in methods]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (`argv`, or `sys.argv[1:]`)."""
    parser = bc.add_data_dir_argument(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--plan", help="comma-separated plans among " + ", ".join(PLANS))
    parser.add_argument("--method", default=",".join(CHANNEL_METHODS),
                        help="comma-separated methods among " + ", ".join(METHODS))
    parser.add_argument("--flops", type=float, nargs="+", default=[0.25])
    parser.add_argument("--sparsity", type=float, nargs="+", default=None,
                        help="weight granularity at these sparsities instead of --flops")
    parser.add_argument("--max-params", type=float, default=None,
                        help="with --flops: also keep at most this fraction of the dense "
                             "parameters (part of the run's name)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--prune-epochs", type=int, default=PRUNE_EPOCHS,
                        help="the first epochs, during which the methods prune (0: once, "
                             "before the first step)")
    parser.add_argument("--prune-events", type=int, default=0,
                        help="with --prune-epochs 0: prune gradually in this many events over "
                             "the first half of the first epoch (part of the run's name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-density", type=float, default=0.0,
                        help="fraction of every group's channels (kernel's weights) kept")
    parser.add_argument("--images", type=int, default=None,
                        help="train on this many training images (a seeded subset; dry runs)")
    parser.add_argument("--results", default="quality",
                        help="results file stem (--report: several, comma-separated; a run "
                             "in a later file replaces the same run in an earlier one)")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="--report: folder of the plots (default: docs/img for the "
                             "'quality' results, else the results' model folder)")
    parser.add_argument("--options", default="",
                        help="keyword arguments of " + ", ".join(OPTION_METHODS) + ", e.g. "
                             "'merge=False,hutchinson_samples=32' (part of the run's name)")
    parser.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                        help="distil from the dense model with this weight (tfprune.Distiller, "
                             f"temperature {DISTILL_TEMPERATURE:g}); part of the run's name")
    parser.add_argument("--batch-size", type=int, default=bc.PROTOCOL_BATCH,
                        help="images per step of the fine-tuning runs (default: the "
                             f"protocol's {bc.PROTOCOL_BATCH}); part of the run's name")
    parser.add_argument("--lr", type=float, default=bc.FINE_TUNE_LR,
                        help="peak learning rate of the fine-tuning runs' cosine decays "
                             f"(default {bc.FINE_TUNE_LR:g}); part of the run's name")
    parser.add_argument("--augment", choices=bc.AUGMENTATIONS, default="protocol",
                        help="augmentation of the fine-tuning runs' training images: the "
                             "protocol's flip and translation (default), the flip alone, or "
                             "none; part of the run's name")
    parser.add_argument("--after-strip", choices=AFTER_STRIP, default="continue",
                        help="learning rate of the stripped model's epochs: continue the run's "
                             "cosine decay (default) or rewind it to the peak, decayed to 0 "
                             "over the remaining epochs; 'rewind' is part of the run's name")
    parser.add_argument("--calibration", type=int, default=None, metavar="IMAGES",
                        help="calibration images of " + ", ".join(CALIBRATION_IMAGES)
                             + " (default: " + ", ".join(f"{k} {v}" for k, v in
                                                          CALIBRATION_IMAGES.items())
                             + "; part of the run's name)")
    parser.add_argument("--no-deploy", action="store_true")
    parser.add_argument("--recalibrate", type=int, default=RECALIBRATION_IMAGES,
                        metavar="IMAGES",
                        help="re-estimate the BatchNorm statistics of every final model on "
                             "this many clean training images (0: keep them as trained)")
    parser.add_argument("--report", action="store_true", help="print the table, write the plots")
    parser.add_argument("--match", default=None, metavar="REGEX",
                        help="--report: only the runs whose name matches this regular "
                             "expression (and the dense model), e.g. 'b16_lr0.004'")
    parser.add_argument("--latency", type=int, default=0, metavar="ROUNDS",
                        help="time every recorded int8 model (and tfmot's) side by side in "
                             "TFLite Micro, ROUNDS interleaved rounds, before --report")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.plan and any(p not in PLANS for p in args.plan.split(",")):
        raise InvalidPruningArgumentError(f"--plan {args.plan}: accepted are {', '.join(PLANS)}")

    if args.match is not None and not (args.report or args.latency):
        raise InvalidPruningArgumentError(
            f"--match {args.match!r} selects the runs of --report or --latency; give one of them")
    if args.report or args.latency:
        stems = [s for s in args.results.split(",") if s]
        if args.latency and len(stems) != 1:
            raise InvalidPruningArgumentError(
                f"--latency times the models of one results file; --results {args.results}")
        rows = select_rows(_latest(report_rows(stems)), args.match)
        latency_path = bc.CACHE_DIR / "results" / f"{stems[0]}_latency.json"
        if args.latency:
            dense = next(r["run"] for r in rows if r["method"] == "dense")
            found = measure_latencies(latency_flatbuffers(rows), dense, rounds=args.latency)
            bc.append_result(latency_path.stem, {"reference": dense, "models": found,
                                                 "machine": bc.machine_info()})
        latency = json.loads(latency_path.read_text())[-1]["models"] \
            if latency_path.is_file() else None
        if latency:
            print(json.dumps({k: (v["micro_ms"], v["ratio"]) for k, v in latency.items()}))
        print(report_table(rows, latency))
        if seed_summary(rows):
            print(seed_table(rows))
        img = pathlib.Path(args.plots) if args.plots else (
            bc.ROOT / "docs" / "img" if stems == ["quality"] else model_dir("+".join(stems)))
        print(plot_accuracy_flops(rows, img / "quality_accuracy_flops.png"))
        print(plot_kept_channels(rows, img / "quality_kept_channels.png"))
        return rows

    specs = specs_from_args(args)
    data = bc.load_cifar10(args.data_dir)
    if args.images:
        if not 128 <= args.images <= len(data[0][0]):
            raise DataError(f"--images {args.images}: between 128 and {len(data[0][0])}")
        order = np.sort(np.random.default_rng(args.seed).permutation(len(data[0][0]))[:args.images])
        data = ((data[0][0][order], data[0][1][order]), data[1])
    dense_path = bc.dense_resnet8_path(0)
    if not dense_path.is_file():
        raise DataError(f"{dense_path} is missing: run `make bench-dense` first")
    base = args.data_dir or tfprune.datasets.shared_data_dir(required=True)
    eval_data = pathlib.Path(base) / "cifar10-lossless-200"
    rows = []
    for spec in specs:
        rows.append(run(spec, data, dense_path, results=args.results, eval_data=eval_data,
                        deploy=not args.no_deploy, recalibrate=args.recalibrate))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

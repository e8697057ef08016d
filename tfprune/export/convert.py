"""`convert`: strip a model and write everything a microcontroller build needs, measured.

Everything is built in a temporary folder beside `out_dir` and renamed into place at the end;
on any failure the temporary folder is removed and `out_dir` is left as it was.

Example:

```python
from tfprune.export import convert
report = convert("small.keras", "build/small",
                 calibration="../shared/data/cifar10/train",
                 eval_data="../shared/data/cifar10-lossless-200",
                 baseline="dense.keras", max_arena=64 * 1024)
print(report.summary())
```
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfprune.errors import (BudgetExceededError, CalibrationRequiredError, DataError,
                            InvalidExportOptionError, MicroRuntimeUnavailableError,
                            NotAKerasModelError, NothingToPruneError, OutputDirError,
                            UnsupportedModelError)
from tfprune.export import micro
from tfprune.export.data import load_data
from tfprune.export.edgetpu import edgetpu_check
from tfprune.export.flatbuffer import TfliteModel, dequantize
from tfprune.export.report import GENERATOR, Report, ratios
from tfprune.export.runtime import CLOCKS, LATENCY_RUNS, measure_latency, run_tflite
from tfprune.export.verify import verify_micro
from tfprune.export.tflite import native_output_captured, require_inputs, tflite_variants

DEFAULT_SAMPLES = 200


# --- inputs ------------------------------------------------------------------------------


def load_keras_model(source):
    """A `keras.Model` from a model or a `.keras` file, with a clear error for anything else.

    Args:
        source: a `keras.Model`, or the path of a `.keras` file (loaded without compiling).

    Returns:
        `(model, description)`: the model and where it came from (the path, or
        `"<in-memory model>"`).

    Raises:
        NotAKerasModelError: a missing file, a file that is not a `.keras` archive, or one
            that Keras cannot load (the message quotes Keras' reason).

    Example:

    ```python
    model, where = load_keras_model("small.keras")
    ```
    """
    import keras

    if isinstance(source, keras.Model):
        return source, "<in-memory model>"
    if not isinstance(source, (str, os.PathLike)):
        raise NotAKerasModelError(
            "model must be a keras.Model or the path of a .keras file; got "
            f"{type(source).__name__}")
    path = pathlib.Path(source)
    if not path.is_file():
        raise NotAKerasModelError(f"model file {str(path)!r} does not exist")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise NotAKerasModelError(
            f"{str(path)!r} is not a Keras model file: expected a .keras archive as written by "
            "model.save('name.keras') (legacy .h5 files and SavedModel folders are not accepted)")
    try:
        with native_output_captured():
            model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive; say which file and why
        raise NotAKerasModelError(f"{str(path)!r} could not be loaded as a Keras model: "
                                  f"{type(e).__name__}: {e}") from e
    if not isinstance(model, keras.Model):
        raise NotAKerasModelError(
            f"{str(path)!r} holds a {type(model).__name__}, not a keras.Model")
    return model, str(path)


def _strip_if_possible(model) -> Tuple[object, str]:
    """`tfprune.strip(model)` (wrappers and zeroed channels removed) where tfprune has it."""
    import tfprune

    strip = getattr(tfprune, "strip", None)
    if strip is None:
        return model, "not stripped (tfprune.strip is not available)"
    try:
        return strip(model), "tfprune.strip"
    except (UnsupportedModelError, NothingToPruneError) as e:
        return model, f"not stripped ({type(e).__name__}: {e})"


def _check_positive(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidExportOptionError(f"{name} must be a positive integer; got {value!r}")


# --- the output folder -------------------------------------------------------------------


class _Staging:
    """A temporary folder beside the target, renamed onto it on success."""

    def __init__(self, out_dir):
        self.target = pathlib.Path(out_dir).absolute()
        if self.target.exists() and not self.target.is_dir():
            raise OutputDirError(f"output {str(self.target)!r} exists and is not a folder")
        if self.target.is_dir() and any(self.target.iterdir()) and not _is_export(self.target):
            raise OutputDirError(
                f"output folder {str(self.target)!r} holds files that are not a tfprune export; "
                "choose a new or empty folder (a previous export there is replaced)")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-",
                                                      dir=self.target.parent))
            # mkdtemp makes a private folder; the export gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            self.path.chmod(0o777 & ~umask)
        except OSError as e:
            raise OutputDirError(f"cannot write the output folder {str(self.target)!r}: "
                                 f"{e.strerror or e}") from e

    def commit(self) -> None:
        old = None
        if self.target.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-",
                                                dir=self.target.parent))
            os.rename(self.target, old / "previous")
        try:
            os.rename(self.path, self.target)
        except OSError:
            if old is not None:
                os.rename(old / "previous", self.target)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _is_export(folder: pathlib.Path) -> bool:
    try:
        return json.loads((folder / "report.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


# --- measuring one model -----------------------------------------------------------------


def _outputs(model, x) -> List[np.ndarray]:
    y = model.predict(np.asarray(x, np.float32), batch_size=64, verbose=0)
    return [np.asarray(a) for a in (y if isinstance(y, (list, tuple)) else [y])]


def _top1(y) -> Optional[np.ndarray]:
    return np.argmax(y, axis=-1) if y.ndim == 2 and y.shape[-1] > 1 else None


def _float_ops(fb: TfliteModel) -> List[str]:
    names = []
    for op in fb.ops():
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(t.dtype == "FLOAT32" and not t.constant for t in op.inputs + op.outputs):
            names.append(op.name)
    return list(dict.fromkeys(names))


def _tensor_info(t) -> dict:
    return {"shape": list(t.shape), "dtype": t.dtype, "scale": t.scales[0] if t.scales else None,
            "zero_point": t.zero_points[0] if t.zero_points else None}


class _Measurement:
    """Converts one model and measures it; `files` holds what `convert` writes."""

    def __init__(self, model, source, strip_method, params_before, options):
        self.model, self.options = model, options
        self.timings: Dict[str, float] = {}
        self.notes: List[str] = []
        self.files: Dict[str, bytes] = {}
        self.sections = {"model": {
            "name": model.name, "source": source,
            "input_shape": list(model.inputs[0].shape[1:]),
            "input_dtype": str(model.inputs[0].dtype),
            "output_shapes": [list(o.shape[1:]) for o in model.outputs],
            "strip": {"method": strip_method, "params_before": params_before,
                      "params_after": int(model.count_params())}}}

    @contextlib.contextmanager
    def step(self, name):
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)

    def run(self, calibration, evaluation, budgets: bool) -> Report:
        import tfprune

        o = self.options
        with self.step("profile"):
            p = tfprune.profile(self.model)
            self.sections["profile"] = {"params": p.params, "trainable_params": p.trainable_params,
                                        "macs": p.macs, "flops": p.flops,
                                        "weight_bytes": p.weight_bytes}
        with self.step("convert"):
            float_fb, int8_fb = tflite_variants(self.model, calibration, o["int8"], o["batch_size"],
                                                o["dense_as_conv"])
        self.files["model_float.tflite"] = float_fb
        if int8_fb is not None:
            self.files["model_int8.tflite"] = int8_fb
        deploy = int8_fb if int8_fb is not None else float_fb
        deploy_name = "model_int8.tflite" if int8_fb is not None else "model_float.tflite"
        fb = TfliteModel(deploy)
        self.sections["tflite"] = {
            "float_bytes": len(float_fb), "int8_bytes": None if int8_fb is None else len(int8_fb),
            "batch_size": o["batch_size"], "dense_as_conv": o["dense_as_conv"],
            "deployed": deploy_name, "ops": fb.op_counts(),
            "float_ops_in_int8": [] if int8_fb is None else _float_ops(fb),
            "inputs": [_tensor_info(t) for t in fb.main.inputs],
            "outputs": [_tensor_info(t) for t in fb.main.outputs]}
        float_ops = self.sections["tflite"]["float_ops_in_int8"]
        if float_ops:
            self.notes.append("ops computing in float inside the int8 model (slow on MCUs, not "
                              f"Edge TPU-ready): {', '.join(float_ops)}")
        micro.check_micro_ops(deploy, self.model, deploy_name)
        if budgets and o["max_flash"] is not None and len(deploy) > o["max_flash"]:
            raise BudgetExceededError(
                f"{deploy_name} is {len(deploy):,} bytes, over the flash budget --max-flash "
                f"{o['max_flash']:,} by {len(deploy) - o['max_flash']:,} bytes; prune further "
                "(a lower FLOPs/params target) or raise the budget")
        available = micro.micro_available()
        self.sections["micro"] = {"available": available, "deployed": deploy_name,
                                  "version": _version("tflite-micro")}
        arena = None
        if available:
            with self.step("arena"):
                arena = micro.measure_arena(deploy)
            self.sections["arena"] = arena.to_dict()
        else:
            self.notes.append("TFLite Micro is not installed here (tflite-micro wheels exist "
                              "for Linux x86-64, CPython 3.10-3.13): no arena, no TFLite Micro "
                              "verification or time")
        if budgets and o["max_arena"] is not None and arena.bytes > o["max_arena"]:
            raise BudgetExceededError(
                f"the TFLite Micro arena of {deploy_name} is {arena.bytes:,} bytes, over the "
                f"budget --max-arena {o['max_arena']:,} by {arena.bytes - o['max_arena']:,} "
                "bytes; prune the widest activations further or raise the budget")
        if calibration is not None:
            with self.step("verify"):
                self._verify(calibration, float_fb, deploy, fb, arena)
        if evaluation is not None:
            with self.step("evaluate"):
                self._evaluate(evaluation, float_fb, deploy, fb, arena)
        with self.step("latency"):
            self._latency(float_fb, int8_fb, deploy, arena)
        if int8_fb is not None:
            with self.step("edgetpu"):
                self.sections["edgetpu"] = edgetpu_check(int8_fb, self.model).to_dict()
        self.arena = arena
        self.deploy = deploy
        return Report(name=o["name"], timings_s=self.timings, notes=self.notes,
                      environment=_environment(), **self.sections)

    def _verify(self, x, float_fb, deploy, fb, arena) -> None:
        keras_out = _outputs(self.model, x)
        float_out = run_tflite(float_fb, x, "litert")
        v = {"samples": int(len(x))}
        if len(keras_out) == 1:
            v["float_tflite_vs_keras"] = {
                "max_abs_diff": float(np.max(np.abs(float_out[0] - keras_out[0])))}
        if arena is not None:
            check = verify_micro(deploy, x, arena_size=arena.bytes)
            v["micro_vs_litert_reference"] = check.to_dict()
            d = check.first_divergence
            if d is not None and d["op"] == "FULLY_CONNECTED" and not self.options["dense_as_conv"]:
                self.notes.append(
                    f"TFLite Micro and LiteRT's reference kernels differ on "
                    f"{check.mismatched_samples} of {check.samples} samples, first at "
                    "FULLY_CONNECTED: LiteRT's reference FULLY_CONNECTED requantizes in double "
                    "precision, TFLite Micro in fixed point (docs/deployment.md); "
                    "--dense-as-conv (dense_as_conv=True) converts Dense layers to CONV_2D, "
                    "bit exact in both")
            deployed, runtime = check.micro_outputs[0], "micro"
        else:
            deployed, runtime = run_tflite(deploy, x, "litert_ref")[0], "litert_ref"
        if self.options["int8"] and len(keras_out) == 1:
            deq = dequantize(deployed, fb.main.outputs[0])
            agreement = {"runtime": runtime,
                         "max_abs_diff": float(np.max(np.abs(deq - keras_out[0]))),
                         "mean_abs_diff": float(np.mean(np.abs(deq - keras_out[0])))}
            top1 = _top1(deq)
            if top1 is not None:
                agreement["top1_agreement"] = float(np.mean(top1 == _top1(keras_out[0])))
            v["int8_vs_float"] = agreement
        self.sections["verification"] = v

    def _evaluate(self, data, float_fb, deploy, fb, arena) -> None:
        x, y = data
        kind = "int8" if self.options["int8"] else "float"
        keras_out = _outputs(self.model, x)
        if len(keras_out) != 1 or _top1(keras_out[0]) is None:
            self.notes.append(
                "accuracy not measured: top-1 needs one output of shape (batch, classes)")
            return
        acc = {"samples": int(len(x)), "top1_float_keras": float(np.mean(_top1(keras_out[0]) == y))}
        (lite,) = run_tflite(deploy, x, "litert")
        acc[f"top1_litert_{kind}"] = float(np.mean(np.argmax(lite, -1) == y))
        if arena is not None:
            (mic,) = run_tflite(deploy, x, "micro", arena_size=arena.bytes)
            acc[f"top1_micro_{kind}"] = float(np.mean(np.argmax(mic, -1) == y))
        self.sections["accuracy"] = acc

    def _latency(self, float_fb, int8_fb, deploy, arena) -> None:
        runs, clock = self.options["latency_runs"], self.options["latency_clock"]
        lat = {"runs": runs, "threads": 1, "clock": clock}
        for kind, flatbuffer in (("float", float_fb), ("int8", int8_fb)):
            if flatbuffer is None:
                continue
            for runtime in ("litert", "litert_ref"):
                lat[f"{runtime}_{kind}"] = measure_latency(flatbuffer, runtime, repeat=runs,
                                                           clock=clock)
        if arena is not None:
            lat["micro"] = measure_latency(deploy, "micro", repeat=runs, arena_size=arena.bytes,
                                           clock=clock)
        self.sections["latency_ms"] = lat


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment() -> dict:
    return {"tfprune": _version("tfprune"), "tensorflow": _version("tensorflow"),
            "keras": _version("keras"), "ai-edge-litert": _version("ai-edge-litert"),
            "tflite-micro": _version("tflite-micro"), "python": platform.python_version(),
            "cpu": _cpu(), "cores": os.cpu_count()}


# --- the whole job -------------------------------------------------------------------------


def _prepare(source, strip: bool):
    model, where = load_keras_model(source)
    require_inputs(model)
    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"convert takes models with one input (DATA feeds one); {model.name!r} has "
            f"{len(model.inputs)}: convert it with tfprune.export.to_tflite and a list of "
            "calibration arrays")
    params_before = int(model.count_params())
    stripped, method = _strip_if_possible(model) if strip else (model, "not stripped (strip=False)")
    return stripped, where, method, params_before


def convert(model, out_dir, calibration=None, *, eval_data=None, name: str = "model",
            int8: bool = True, batch_size: int = 1, baseline=None,
            max_arena: Optional[int] = None, max_flash: Optional[int] = None,
            samples: int = DEFAULT_SAMPLES, eval_samples: Optional[int] = None,
            strip: bool = True, latency_runs: int = LATENCY_RUNS, seed: int = 0,
            dense_as_conv: bool = False, latency_clock: str = "wall") -> Report:
    """Strips a model, converts it, measures it, and writes a deployable folder.

    Writes into `out_dir`: `model.keras` (the stripped model), `model_float.tflite`,
    `model_int8.tflite` (full integer, int8 in/out, fixed batch), `<name>_model_data.cc/.h`
    (TFLite Micro C array, arena constants), `<name>_op_resolver.h` (exactly the model's ops),
    `report.json` and `report.md`. See docs/deployment.md for every field of the report.

    Args:
        model: a `keras.Model` (not modified) or the path of a `.keras` file.
        out_dir: the output folder: new, empty, or a previous export (replaced).
        calibration: DATA for int8 calibration and verification (see `load_data`); required
            with `int8=True`.
        eval_data: labelled DATA for top-1 accuracy in Keras, LiteRT and TFLite Micro.
        name: C identifier for the generated symbols and file names.
        int8: deploy the full-integer model (False: the float model).
        batch_size: fixed batch of the flatbuffers (1 for microcontrollers and the Edge TPU).
        baseline: a dense model (or `.keras` path) measured the same way, side by side.
        max_arena: arena budget in bytes; a model over it is an error.
        max_flash: flatbuffer budget in bytes; a model over it is an error.
        samples: calibration samples used (a seeded random subset).
        eval_samples: evaluation samples used (default: all).
        strip: strip pruning wrappers and zeroed channels first.
        latency_runs: timed invokes per runtime (median reported).
        latency_clock: `"wall"` (elapsed time, the benchmark protocol's) or `"cpu"` (CPU
            time of the invoking thread, steadier on a machine shared with other jobs).
        seed: seed of the sample subsets.
        dense_as_conv: convert `Dense` layers on 2-D inputs as 1x1 `CONV_2D` (`to_tflite`):
            TFLite Micro then matches LiteRT's reference kernels bit for bit end to end.

    Returns:
        The `Report` also written as `report.json`.

    Raises:
        NotAKerasModelError, CalibrationRequiredError, UnsupportedOpError,
        BudgetExceededError, OutputDirError, InvalidExportOptionError, DataError: nothing
        is left in `out_dir` when any error is raised.

    Example:

    ```python
    report = convert("small.keras", "build", calibration="data/train", name="small")
    ```
    """
    started = time.perf_counter()
    micro.check_name(name)
    for option, value in (("batch_size", batch_size), ("samples", samples),
                          ("latency_runs", latency_runs)):
        _check_positive(option, value, allow_none=False)
    for option, value in (("max_arena", max_arena), ("max_flash", max_flash),
                          ("eval_samples", eval_samples)):
        _check_positive(option, value)
    if int8 and calibration is None:
        raise CalibrationRequiredError(
            "int8 export needs calibration data (--calibration DATA): without a representative "
            "dataset the converter makes a hybrid model (int8 weights, float activations) that "
            "TFLite Micro and the Edge TPU reject. Give ~200 training inputs, or --no-int8")
    if max_arena is not None and not micro.micro_available():
        raise MicroRuntimeUnavailableError(
            "--max-arena needs the arena measured with TFLite Micro, which is not installed "
            "(tflite-micro wheels exist for Linux x86-64, CPython 3.10-3.13)")
    if not isinstance(dense_as_conv, bool):
        raise InvalidExportOptionError(f"dense_as_conv must be True or False; got {dense_as_conv!r}")
    if latency_clock not in CLOCKS:
        raise InvalidExportOptionError(
            f"latency_clock must be one of {CLOCKS}; got {latency_clock!r}")
    options = {"name": name, "int8": int8, "batch_size": batch_size, "max_arena": max_arena,
               "max_flash": max_flash, "latency_runs": latency_runs,
               "dense_as_conv": dense_as_conv, "latency_clock": latency_clock}
    staging = _Staging(out_dir)
    try:
        t0 = time.perf_counter()
        stripped, where, method, params_before = _prepare(model, strip)
        shape = tuple(stripped.inputs[0].shape[1:])
        calib = None if calibration is None else load_data(calibration, shape, samples, seed)[0]
        evaluation = None
        if eval_data is not None:
            evaluation = load_data(eval_data, shape, eval_samples, seed)
            if evaluation[1] is None:
                raise DataError(
                    f"evaluation data {eval_data!r} has no labels; accuracy needs (x, y): an "
                    "image folder, .bin + y_labels.csv, an .npz with y, or tfds:")
        load_s = time.perf_counter() - t0
        main = _Measurement(stripped, where, method, params_before, options)
        report = main.run(calib, evaluation, budgets=True)
        report.timings_s = {"load": round(load_s, 3), **report.timings_s}
        if baseline is not None:
            base_model, base_where, base_method, base_params = _prepare(baseline, strip)
            base = _Measurement(base_model, base_where, base_method, base_params,
                                {**options, "name": f"{name}_baseline"})
            report.baseline = base.run(calib, evaluation, budgets=False)
            report.ratios = ratios(report, report.baseline)
        report.budgets = {"max_flash": max_flash, "flash_bytes": len(main.deploy),
                          "max_arena": max_arena,
                          "arena_bytes": None if main.arena is None else main.arena.bytes}
        report.timings_s["total"] = round(time.perf_counter() - started, 3)
        _write(staging.path, stripped, main, report)
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    return report


def _write(folder: pathlib.Path, model, main: _Measurement, report: Report) -> None:
    name = report.name
    with native_output_captured():
        model.save(folder / "model.keras")
    files = dict(main.files)
    source, header = micro.to_c_array(main.deploy, name, arena=main.arena)
    files[f"{name}_model_data.cc"] = source.encode()
    files[f"{name}_model_data.h"] = header.encode()
    files[f"{name}_op_resolver.h"] = micro.op_resolver_header(main.deploy, name).encode()
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    report.files = {"model.keras": (folder / "model.keras").stat().st_size,
                    **{k: len(v) for k, v in files.items()}}
    (folder / "report.json").write_text(report.to_json())
    (folder / "report.md").write_text(report.to_markdown())

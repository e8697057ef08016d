"""`Report`: what `convert` measured, as JSON (`report.json`) and Markdown (`report.md`).

Every figure is measured on the files written next to the report; `docs/deployment.md`
explains each field.

Example:

```python
from tfprune.export import Report
report = Report.load("build/report.json")
report.arena["bytes"], report.verification["micro_vs_litert_reference"]["bit_exact"]
print(report.to_markdown())
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Dict, List, Optional

GENERATOR = "tfprune"

# (label, section, key) of the figures compared with a baseline; lower is better for all.
_COMPARED = (
    ("params", "profile", "params"),
    ("FLOPs", "profile", "flops"),
    ("float .tflite bytes", "tflite", "float_bytes"),
    ("int8 .tflite bytes", "tflite", "int8_bytes"),
    ("arena bytes", "arena", "bytes"),
    ("TFLite Micro ms", "latency_ms", "micro"),
    ("LiteRT reference ms (int8)", "latency_ms", "litert_ref_int8"),
    ("LiteRT reference ms (float)", "latency_ms", "litert_ref_float"),
    ("LiteRT ms (int8)", "latency_ms", "litert_int8"),
    ("LiteRT ms (float)", "latency_ms", "litert_float"),
)


@dataclasses.dataclass
class Report:
    """The measurements of one converted model (and of its baseline, when given).

    Attributes:
        name: the export's name (symbol prefix of the C sources).
        model: source, input and output shapes, and what stripping did.
        profile: `tfprune.profile` totals: params, trainable_params, macs, flops, weight_bytes.
        tflite: bytes of the float and int8 flatbuffers, batch size, op counts, the ops left
            in float inside the int8 model, and the input/output quantization.
        micro: whether TFLite Micro ran here, its version, the deployed file.
        arena: `ArenaSize.to_dict()` of the deployed model (None without TFLite Micro).
        verification: TFLite Micro vs LiteRT reference kernels, int8 vs float, float
            TFLite vs Keras, on the calibration samples.
        accuracy: top-1 on the evaluation set: float (Keras), LiteRT and TFLite Micro.
        latency_ms: median of `runs` single-thread invokes per runtime.
        edgetpu: `EdgeTpuReport.to_dict()` of the int8 model.
        budgets: the flash and arena budgets and the measured values.
        files: bytes of every file written, the reports aside.
        baseline: the same measurements for the baseline model, or None.
        ratios: this model / baseline for the compared figures, or None.
        environment: versions and machine.
        timings_s: seconds per step.
        notes: what was skipped and why.
    """

    name: str
    model: dict
    profile: dict
    tflite: dict
    micro: dict
    arena: Optional[dict] = None
    verification: Optional[dict] = None
    accuracy: Optional[dict] = None
    latency_ms: dict = dataclasses.field(default_factory=dict)
    edgetpu: Optional[dict] = None
    budgets: dict = dataclasses.field(default_factory=dict)
    files: Dict[str, int] = dataclasses.field(default_factory=dict)
    baseline: Optional["Report"] = None
    ratios: Optional[Dict[str, float]] = None
    environment: dict = dataclasses.field(default_factory=dict)
    timings_s: Dict[str, float] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"generator": GENERATOR}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = value.to_dict() if isinstance(value, Report) else value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("baseline") is not None:
            kwargs["baseline"] = cls.from_dict(kwargs["baseline"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n"

    @classmethod
    def load(cls, path) -> "Report":
        """Reads a `report.json` written by `convert`."""
        return cls.from_dict(json.loads(pathlib.Path(path).read_text()))

    def figure(self, section: str, key: str):
        """One figure, e.g. `figure("arena", "bytes")`; None when it was not measured."""
        values = getattr(self, section, None)
        return values.get(key) if isinstance(values, dict) else None

    def summary(self) -> str:
        """A few lines with the main figures (what the command prints)."""
        lines = [f"{self.name}: {self.model.get('source', '')}"]
        for label, section, key in _COMPARED:
            value = self.figure(section, key)
            if value is None:
                continue
            ratio = (self.ratios or {}).get(f"{section}.{key}")
            extra = f"  ({ratio:.3f} x baseline)" if ratio is not None else ""
            lines.append(f"  {label:<28} {_fmt(value)}{extra}")
        v = self.verification or {}
        if "micro_vs_litert_reference" in v:
            agreement = _agreement(v["micro_vs_litert_reference"])
            lines.append(f"  TFLite Micro vs LiteRT ref   {agreement}")
        for key, value in (self.accuracy or {}).items():
            if key.startswith("top1_"):
                lines.append(f"  top-1 {key[5:]:<22} {100 * value:.2f}%")
        if self.edgetpu is not None:
            e = self.edgetpu
            state = "ready" if e["ready"] else "not ready"
            lines.append(f"  Edge TPU                     {state} "
                         f"({e['mapped_ops']}/{e['total_ops']} ops)")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        out = [f"# {self.name}", "", f"Model: `{self.model.get('source')}`, input "
               f"{self.model.get('input_shape')} {self.model.get('input_dtype')}, "
               f"stripped with {self.model.get('strip', {}).get('method')}.", ""]
        out += ["## Figures", ""]
        if self.baseline is not None:
            out += ["| | this model | baseline | ratio |", "|---|---:|---:|---:|"]
        else:
            out += ["| | value |", "|---|---:|"]
        for label, section, key in _COMPARED:
            value = self.figure(section, key)
            if value is None:
                continue
            if self.baseline is not None:
                base = self.baseline.figure(section, key)
                ratio = (self.ratios or {}).get(f"{section}.{key}")
                out.append(f"| {label} | {_fmt(value)} | {_fmt(base)} | "
                           f"{'' if ratio is None else f'{ratio:.3f}'} |")
            else:
                out.append(f"| {label} | {_fmt(value)} |")
        if self.arena:
            a = self.arena
            out += ["", "## TFLite Micro arena", "",
                    f"Smallest arena that allocates and runs: **{a['bytes']:,} bytes** "
                    f"({a['step']}-byte steps, {a['probes']} probes; allocator total "
                    f"{a['used_bytes']:,} = head {a['head_bytes']:,} + tail {a['tail_bytes']:,}). "
                    f"Recommended: **{a['recommended']:,} bytes**: {a['margin']}."]
        ops = self.tflite.get("ops", {})
        out += ["", "## Ops", "", ", ".join(f"{k} x{v}" for k, v in ops.items())]
        if self.tflite.get("float_ops_in_int8"):
            out.append(f"\nOps computing in float inside the int8 model: "
                       f"{', '.join(self.tflite['float_ops_in_int8'])}.")
        if self.verification:
            out += ["", "## Verification", "", "```", json.dumps(self.verification, indent=2,
                                                                 default=_jsonable), "```"]
        if self.accuracy:
            out += ["", "## Accuracy", "", "| runtime | top-1 |", "|---|---:|"]
            out += [f"| {k[5:]} | {100 * v:.2f}% |" for k, v in self.accuracy.items()
                    if k.startswith("top1_")]
            out.append(f"\n{self.accuracy.get('samples')} samples.")
        if self.edgetpu is not None:
            e = self.edgetpu
            out += ["", "## Edge TPU readiness", "",
                    f"{'Ready' if e['ready'] else 'Not ready'}: {e['mapped_ops']} of "
                    f"{e['total_ops']} ops would map to the Edge TPU."]
            if e.get("first_unsupported"):
                f = e["first_unsupported"]
                layers = ", ".join(f.get("layers") or []) or "layer unknown"
                out.append(f"Mapping stops at op {f['index']} {f['op']} ({layers}): {f['reason']}.")
            out += [f"- {issue}" for issue in e["issues"][:20]]
        if self.budgets:
            out += ["", "## Budgets", "", "```", json.dumps(self.budgets, indent=2), "```"]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        out += ["", "## Files", ""] + [f"- `{k}`: {v:,} bytes" for k, v in self.files.items()]
        out += ["", "## Environment", "", "```", json.dumps(self.environment, indent=2),
                json.dumps(self.timings_s), "```", ""]
        return "\n".join(out)


def ratios(report: Report, baseline: Report) -> Dict[str, float]:
    """`report / baseline` for every figure both have (`"section.key"` -> ratio)."""
    result = {}
    for _, section, key in _COMPARED:
        a, b = report.figure(section, key), baseline.figure(section, key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not math.isnan(b):
            result[f"{section}.{key}"] = a / b
    return result


def _agreement(m: dict) -> str:
    if m["bit_exact"]:
        return f"bit exact on {m['samples']} samples"
    text = (f"{m['samples'] - m['mismatched_samples']}/{m['samples']} samples bit exact, "
            f"{m['mismatched_samples']} differ by <= {m['max_abs_diff']:g}")
    d = m.get("first_divergence")
    return text + (f" (first at op {d['op_index']} {d['op']})" if d else "")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

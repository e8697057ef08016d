"""Runs the TFLite Micro Python interpreter in a child process (see `tfprune.export.micro`).

A too-small arena or a malformed model can crash the interpreter's process, and the arena use
is only printed to the C-level stderr, so the parent never loads TFLite Micro itself. This
script imports only numpy and tflite_micro (not tfprune, not TensorFlow) to start fast.

Usage:
    python _micro_worker.py probe MODEL ARENA
        Allocates with an ARENA-byte arena, invokes once on zeros, prints the allocations.
    python _micro_worker.py run MODEL ARENA INPUTS.npz OUTPUTS.npz NUM_OUTPUTS BATCH REPEAT
        Runs every sample of INPUTS.npz (arrays in0, in1, ... already in the input types, a
        multiple of BATCH long) and saves out0, out1, ... and the median of REPEAT timed
        invokes of the first batch (milliseconds, `time_ms`).
    python _micro_worker.py trace MODEL ARENA INPUTS.npz OUTPUTS.npz TENSOR...
        Runs the first batch keeping every tensor and saves the given tensors (t<index>).
"""

import sys
import time

import numpy as np
from tflite_micro import runtime


def _interpreter(model_path, arena, config=runtime.InterpreterConfig.kAllocationRecording):
    with open(model_path, "rb") as fh:
        return runtime.Interpreter.from_bytes(fh.read(), arena_size=int(arena),
                                              intrepreter_config=config)


def _inputs(path):
    with np.load(path) as data:
        return [data[f"in{k}"] for k in range(len(data.files))]


def probe(model_path, arena):
    interpreter = _interpreter(model_path, arena)
    k = 0
    while True:
        try:
            details = interpreter.get_input_details(k)
        except (IndexError, RuntimeError, ValueError):
            break
        interpreter.set_input(np.zeros(details["shape"], details["dtype"]), k)
        k += 1
    interpreter.invoke()
    sys.stderr.flush()
    interpreter.print_allocations()


def run(model_path, arena, inputs_path, outputs_path, num_outputs, batch, repeat, clock="wall"):
    interpreter = _interpreter(model_path, arena)
    inputs = _inputs(inputs_path)
    num_outputs, batch, repeat = int(num_outputs), int(batch), int(repeat)
    outputs = [[] for _ in range(num_outputs)]
    for start in range(0, len(inputs[0]), batch):
        for k, x in enumerate(inputs):
            interpreter.set_input(x[start:start + batch], k)
        interpreter.invoke()
        for j in range(num_outputs):
            outputs[j].append(np.array(interpreter.get_output(j)))
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    times = []
    for _ in range(repeat):
        for k, x in enumerate(inputs):
            interpreter.set_input(x[:batch], k)
        t0 = timer()
        interpreter.invoke()
        times.append(timer() - t0)
    result = {f"out{j}": np.concatenate(o) for j, o in enumerate(outputs)}
    result["time_ms"] = np.array(1e3 * np.median(times) if times else np.nan)
    np.savez(outputs_path, **result)


def trace(model_path, arena, inputs_path, outputs_path, *tensors):
    interpreter = _interpreter(model_path, arena, runtime.InterpreterConfig.kPreserveAllTensors)
    for k, x in enumerate(_inputs(inputs_path)):
        interpreter.set_input(x, k)
    interpreter.invoke()
    np.savez(outputs_path, **{f"t{t}": interpreter.GetTensor(int(t), 0)["tensor_data"]
                              for t in tensors})


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"probe": probe, "run": run, "trace": trace}[command](*args)

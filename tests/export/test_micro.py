import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from export_models import random_images, tiny_cnn

from tfprune.errors import (InvalidExportOptionError, MicroRuntimeUnavailableError,
                            UnsupportedOpError)
from tfprune.export import (MICRO_OPS, TfliteModel, arena_runs, check_micro_ops, measure_arena,
                            micro, micro_unsupported_ops, op_resolver_header, to_c_array,
                            to_tflite, verify_micro)

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed")


@pytest.fixture(scope="module")
def resnet8_arena(resnet8_tflite):
    return measure_arena(resnet8_tflite[1])


@needs_gxx
def test_c_array_compiles_alone_links_and_holds_the_flatbuffer(tiny_tflite, tmp_path):
    arena = measure_arena(tiny_tflite.int8)
    source, header = to_c_array(tiny_tflite.int8, "tiny", arena=arena)
    (tmp_path / "tiny_model_data.cc").write_text(source)
    (tmp_path / "tiny_model_data.h").write_text(header)
    assert "alignas(16) const unsigned char g_tiny_model_data[]" in source
    assert f"constexpr unsigned int g_tiny_model_data_size = {len(tiny_tflite.int8)};" in header
    assert f"g_tiny_arena_size = {arena.recommended};" in header
    compile_only = subprocess.run(
        [GXX, "-std=c++11", "-Wall", "-Werror", "-c", "tiny_model_data.cc"],
        cwd=tmp_path, capture_output=True, text=True)
    assert compile_only.returncode == 0, compile_only.stderr
    (tmp_path / "main.cc").write_text("""
#include <cstdint>
#include <cstdio>
#include "tiny_model_data.h"
alignas(16) static uint8_t tensor_arena[g_tiny_arena_size];
int main(int, char** argv) {
  if (reinterpret_cast<uintptr_t>(g_tiny_model_data) % 16 != 0) return 2;
  if (reinterpret_cast<uintptr_t>(tensor_arena) % 16 != 0) return 3;
  if (g_tiny_arena_size < g_tiny_arena_min_size) return 4;
  FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_tiny_model_data, 1, g_tiny_model_data_size, f);
  return std::fclose(f);
}
""")
    build = subprocess.run([GXX, "-std=c++11", "main.cc", "tiny_model_data.o", "-o", "main"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "main"), str(tmp_path / "dump.bin")])
    assert run.returncode == 0
    assert (tmp_path / "dump.bin").read_bytes() == tiny_tflite.int8


def _resolver_methods(header):
    return re.findall(r"resolver\.(Add\w+)\(\)", header)


def test_resolver_lists_exactly_the_ops_of_the_flatbuffer(resnet8_tflite, tiny_tflite):
    by_method = {m: op for op, m in MICRO_OPS.items()}
    for flatbuffer, name in ((resnet8_tflite[1], "resnet8"), (tiny_tflite.int8, "tiny")):
        header = op_resolver_header(flatbuffer, name)
        methods = _resolver_methods(header)
        assert len(methods) == len(set(methods))
        assert {by_method[m] for m in methods} == set(TfliteModel(flatbuffer).op_names())
        assert f"tflite::MicroMutableOpResolver<{len(methods)}>" in header


@needs_gxx
def test_resolver_header_is_valid_cpp(resnet8_tflite, tmp_path):
    # A stand-in for TFLite Micro's header with every Add method of the table.
    stub = tmp_path / "tensorflow" / "lite" / "micro"
    stub.mkdir(parents=True)
    methods = "\n".join(f"  TfLiteStatus {m}() {{ return kTfLiteOk; }}" for m in MICRO_OPS.values())
    (stub / "micro_mutable_op_resolver.h").write_text(
        "enum TfLiteStatus { kTfLiteOk, kTfLiteError };\nnamespace tflite {\n"
        "template <unsigned int N> class MicroMutableOpResolver {\n public:\n"
        f"{methods}\n}};\n}}\n")
    header = op_resolver_header(resnet8_tflite[1], "resnet8")
    (tmp_path / "resnet8_op_resolver.h").write_text(header)
    (tmp_path / "main.cc").write_text(
        '#include "resnet8_op_resolver.h"\n'
        "int main() { resnet8_op_resolver_t r; "
        "return resnet8_register_ops(r) == kTfLiteOk && g_resnet8_op_count == 5 ? 0 : 1; }\n")
    build = subprocess.run([GXX, "-std=c++11", "-Wall", "-Werror", "-I.", "main.cc", "-o", "main"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert subprocess.run([str(tmp_path / "main")]).returncode == 0


def test_measured_arena_is_the_smallest_that_runs(resnet8_tflite, resnet8_arena):
    a, fb = resnet8_arena, resnet8_tflite[1]
    assert a.bytes % a.step == 0 and a.step == 64
    assert a.head_bytes + a.tail_bytes == a.used_bytes <= a.bytes
    assert arena_runs(fb, a.bytes)
    assert not arena_runs(fb, a.bytes - a.step)
    assert not arena_runs(fb, a.bytes - 1024)
    assert a.recommended >= 1.1 * a.bytes and a.recommended % 1024 == 0
    # The MLPerf Tiny ResNet-8 needs about 56 KB (55,984 bytes published).
    assert 40_000 < a.bytes < 80_000


@pytest.fixture(scope="module")
def resnet8_default_check(resnet8_tflite, resnet8_arena, calibration):
    return verify_micro(resnet8_tflite[1], calibration, arena_size=resnet8_arena.bytes)


def test_micro_matches_litert_reference_kernels_on_resnet8(resnet8_default_check, resnet8_arena,
                                                           calibration):
    check = resnet8_default_check
    assert check.samples == len(calibration) and check.arena_bytes == resnet8_arena.bytes
    if not check.bit_exact:
        # The one known difference: LiteRT's reference FULLY_CONNECTED requantizes in double
        # precision, TFLite Micro's in fixed point (docs/deployment.md). Every op before it
        # is bit exact, and there it is one int8 step at most.
        d = check.first_divergence
        assert d["op"] == "FULLY_CONNECTED" and d["max_abs_diff"] <= 1, check.to_dict()
        assert check.mismatched_samples <= max(1, len(calibration) // 10)


def test_dense_as_conv_makes_resnet8_bit_exact_end_to_end(resnet8, calibration,
                                                          resnet8_default_check):
    flatbuffer = to_tflite(resnet8, calibration, dense_as_conv=True)
    ops = TfliteModel(flatbuffer).op_counts()
    assert "FULLY_CONNECTED" not in ops and ops["CONV_2D"] == 10 and ops["RESHAPE"] == 1, ops
    check = verify_micro(flatbuffer, calibration)
    assert check.bit_exact and check.first_divergence is None, check.to_dict()
    assert check.max_abs_diff == 0 and check.mismatched_samples == 0
    # CONV_2D requantizes as TFLite Micro's FULLY_CONNECTED does: the deployed outputs are
    # those of the default conversion on TFLite Micro, sample for sample.
    np.testing.assert_array_equal(check.micro_outputs[0], resnet8_default_check.micro_outputs[0])
    # The user's model still computes with its Dense layer.
    assert type(resnet8.layers[-1]).__name__ == "Dense"


@pytest.mark.parametrize("layer, op, replacement", [
    ("gelu", "GELU", "keras.ops.sigmoid(1.702 * x)"),
    ("upsampling", "TILE", "keras.layers.Resizing"),
])
def test_unsupported_op_names_its_layer_and_a_replacement(layer, op, replacement):
    import keras

    head = (keras.layers.Activation("gelu", name="act_gelu") if layer == "gelu"
            else keras.layers.UpSampling2D(name="up2"))
    model = tiny_cnn(head=head, name=f"with_{layer}")
    flatbuffer = to_tflite(model, int8=False)
    (missing,) = micro_unsupported_ops(flatbuffer, model)
    assert missing["op"] == op
    assert missing["layers"] == [f"{head.name} ({type(head).__name__})"]
    with pytest.raises(UnsupportedOpError) as info:
        check_micro_ops(flatbuffer, model, "model_float.tflite")
    text = str(info.value)
    assert op in text and head.name in text and replacement in text
    with pytest.raises(UnsupportedOpError, match=op):
        op_resolver_header(flatbuffer, "m")


def test_suggested_replacements_convert_to_micro_ops():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.Lambda(lambda t: t * keras.ops.sigmoid(1.702 * t))(x)           # for GELU
    up = layers.Resizing(16, 16, interpolation="nearest")(x)                  # for UpSampling2D
    model = keras.Model(inputs, layers.Conv2D(2, 1)(up))
    flatbuffer = to_tflite(model, random_images(8, (8, 8, 1)))
    assert micro_unsupported_ops(flatbuffer, model) == []
    assert "RESIZE_NEAREST_NEIGHBOR" in TfliteModel(flatbuffer).op_names()
    a = np.random.default_rng(0).random((2, 5, 7, 3)).astype("float32")
    np.testing.assert_array_equal(layers.UpSampling2D(2)(a),
                                  layers.Resizing(10, 14, interpolation="nearest")(a))


def test_names_must_be_c_identifiers(tiny_tflite):
    for bad in ("1model", "my-model", "", "a b"):
        with pytest.raises(InvalidExportOptionError, match="not a C identifier"):
            to_c_array(tiny_tflite.int8, bad)


def test_missing_tflite_micro_is_said_clearly(tiny_tflite, monkeypatch):
    monkeypatch.setattr(micro, "micro_available", lambda: False)
    with pytest.raises(MicroRuntimeUnavailableError, match="Linux x86-64"):
        measure_arena(tiny_tflite.int8)
    # C sources need no interpreter.
    assert "g_tiny_model_data" in to_c_array(tiny_tflite.int8, "tiny")[0]


_PROBE = r'''
import sys, flatbuffers
from ai_edge_litert import schema_py_generated as s
from tflite_micro import runtime

def one_op_model(code):
    m = s.ModelT(); m.version = 3
    oc = s.OperatorCodeT(); oc.builtinCode = code; oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = 1; m.operatorCodes = [oc]
    sg = s.SubGraphT(); sg.tensors = []
    for i in range(2):
        t = s.TensorT(); t.shape = [1]; t.type = s.TensorType.FLOAT32; t.buffer = 0
        t.name = b"t%d" % i; sg.tensors.append(t)
    sg.inputs, sg.outputs = [0], [1]
    op = s.OperatorT(); op.opcodeIndex = 0; op.inputs = [0]; op.outputs = [1]
    sg.operators = [op]; m.subgraphs = [sg]; m.buffers = [s.BufferT()]
    b = flatbuffers.Builder(1024); b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())

for code in map(int, sys.argv[1:]):
    sys.stderr.write("@@%d\n" % code); sys.stderr.flush()
    try:
        runtime.Interpreter.from_bytes(one_op_model(code), arena_size=1 << 16)
    except Exception:
        pass
'''


def test_micro_op_table_is_what_the_installed_interpreter_registers(tmp_path):
    """A one-op model per builtin code: TFLite Micro says "Didn't find op" for the ones it
    lacks. Malformed one-op models of ops it has may crash it after the lookup succeeded, so
    a crash counts as registered and the probe resumes after that code."""
    from ai_edge_litert import schema_py_generated as schema

    names = {c: n for n, c in vars(schema.BuiltinOperator).items() if not n.startswith("_")}
    names.pop(schema.BuiltinOperator.CUSTOM)
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    todo, registered = sorted(names), set()
    while todo:
        run = subprocess.run([sys.executable, str(script), *map(str, todo)], capture_output=True,
                             text=True, timeout=300)
        chunks = run.stderr.split("@@")[1:]
        for chunk in chunks:
            code = int(chunk.split("\n", 1)[0])
            if "Didn't find op for builtin opcode" not in chunk:
                registered.add(names[code])
        done = int(chunks[-1].split("\n", 1)[0]) if chunks else todo[0]
        todo = [c for c in todo if c > done]
    assert registered == set(MICRO_OPS)
    assert not registered & {"GELU", "TILE"}

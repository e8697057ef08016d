import json
import zipfile

import numpy as np
import pytest
from export_models import random_images, tiny_cnn

import tfprune
from tfprune.errors import (BudgetExceededError, CalibrationRequiredError, DataError,
                            InvalidExportOptionError, MicroRuntimeUnavailableError,
                            NotAKerasModelError, OutputDirError, UnsupportedOpError)
from tfprune.export import MICRO_OPS, Report, TfliteModel, convert, micro

EXPECTED_FILES = {"model.keras", "model_float.tflite", "model_int8.tflite", "resnet8_model_data.cc",
                  "resnet8_model_data.h", "resnet8_op_resolver.h", "report.json", "report.md"}


@pytest.fixture(scope="module")
def exported(resnet8, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "resnet8"
    labels = np.random.default_rng(5).integers(0, 10, len(calibration))
    # uint8 pixels, as images are stored: they must be quantized, not cast.
    report = convert(resnet8, out, calibration=calibration.astype(np.uint8),
                     eval_data=(calibration, labels), name="resnet8", latency_runs=3)
    return out, report


def _nothing_left(out):
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary folder left behind"


def test_export_folder_holds_exactly_the_deployment_files(exported):
    out, report = exported
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert not list(out.parent.glob(".resnet8.*"))
    assert report.files == {p.name: p.stat().st_size for p in out.iterdir()
                            if p.name not in ("report.json", "report.md")}


def test_report_figures_match_the_files(exported, resnet8):
    out, report = exported
    saved = Report.load(out / "report.json")
    assert saved.to_dict() == json.loads(report.to_json())
    int8 = (out / "model_int8.tflite").read_bytes()
    assert saved.tflite["int8_bytes"] == len(int8)
    assert saved.tflite["float_bytes"] == (out / "model_float.tflite").stat().st_size
    assert saved.tflite["ops"] == TfliteModel(int8).op_counts()
    profile = tfprune.profile(resnet8)
    assert (saved.profile["params"], saved.profile["flops"]) == (profile.params, profile.flops)
    header = (out / "resnet8_model_data.h").read_text()
    assert f"g_resnet8_arena_min_size = {saved.arena['bytes']};" in header
    assert f"g_resnet8_model_data_size = {len(int8)};" in header
    methods = (out / "resnet8_op_resolver.h").read_text()
    assert {op for op, m in MICRO_OPS.items() if f".{m}()" in methods} == set(saved.tflite["ops"])
    assert saved.budgets["flash_bytes"] == len(int8)


def test_report_measures_verification_accuracy_latency_and_edgetpu(exported, calibration):
    report = exported[1]
    v = report.verification
    assert v["samples"] == len(calibration)
    assert v["micro_vs_litert_reference"]["samples"] == len(calibration)
    assert v["micro_vs_litert_reference"]["arena_bytes"] == report.arena["bytes"]
    assert v["float_tflite_vs_keras"]["max_abs_diff"] < 1e-4
    assert v["int8_vs_float"]["top1_agreement"] >= 0.75
    assert v["int8_vs_float"]["max_abs_diff"] < 0.5          # softmax outputs in [0, 1]
    acc = report.accuracy
    assert set(acc) == {"samples", "top1_float_keras", "top1_litert_int8", "top1_micro_int8"}
    for key in ("litert_float", "litert_ref_float", "litert_int8", "litert_ref_int8", "micro"):
        assert report.latency_ms[key] > 0
    assert report.latency_ms["runs"] == 3 and report.latency_ms["threads"] == 1
    assert report.edgetpu["ready"]
    assert report.micro["available"] and report.micro["deployed"] == "model_int8.tflite"


def test_saved_model_is_the_stripped_model(exported, resnet8, calibration):
    import keras

    out, report = exported
    loaded = keras.saving.load_model(out / "model.keras")
    np.testing.assert_allclose(loaded.predict(calibration[:4], verbose=0),
                               resnet8.predict(calibration[:4], verbose=0), atol=1e-5)
    assert report.model["strip"]["params_after"] == loaded.count_params()


def test_markdown_and_summary(exported):
    out, report = exported
    md = (out / "report.md").read_text()
    assert f"**{report.arena['bytes']:,} bytes**" in md and "Edge TPU readiness" in md
    assert "TFLite Micro vs LiteRT ref" in report.summary()


def test_baseline_side_by_side(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    small, dense = tiny_cnn(widths=(2, 4), name="small"), tiny_cnn(widths=(8, 16), name="dense")
    weights = [w.copy() for w in small.get_weights()]
    x = random_images(16, (8, 8, 1))
    report = convert(small, tmp_path / "out", calibration=x, baseline=dense, name="small",
                     latency_runs=2)
    assert report.baseline.profile["params"] == dense.count_params()
    ratio = small.count_params() / dense.count_params()
    assert report.ratios["profile.params"] == pytest.approx(ratio)
    assert report.ratios["tflite.int8_bytes"] < 1 and report.ratios["profile.flops"] < 1
    assert "| baseline | ratio |" in (tmp_path / "out" / "report.md").read_text()
    for a, b in zip(weights, small.get_weights()):     # the user's model is left alone
        np.testing.assert_array_equal(a, b)


def test_pruned_channels_are_stripped_before_conversion(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = tiny_cnn(widths=(8, 8), name="pruned")
    group = next(g for g in tfprune.channel_groups(model) if g.prunable)
    masked = tfprune.mask_channels(model, {group.id: [0, 1, 2, 3]})   # what channel pruning leaves
    x = random_images(16, (8, 8, 1))
    report = convert(masked, tmp_path / "out", calibration=x, latency_runs=2)
    strip = report.model["strip"]
    assert strip["method"] == "tfprune.strip" and strip["params_after"] < strip["params_before"]
    saved = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert saved.count_params() == strip["params_after"] == report.profile["params"]
    np.testing.assert_allclose(saved.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)


def test_float_only_export_needs_no_calibration_and_replaces_a_previous_export(tmp_path):
    model = tiny_cnn()
    out = tmp_path / "out"
    first = convert(model, out, int8=False, name="tiny", latency_runs=2)
    assert first.tflite["int8_bytes"] is None and first.verification is None
    assert not (out / "model_int8.tflite").exists() and (out / "tiny_model_data.cc").exists()
    assert TfliteModel((out / "model_float.tflite").read_bytes()).main.inputs[0].dtype == "FLOAT32"
    second = convert(model, out, int8=False, name="again", latency_runs=2)
    assert (out / "again_model_data.cc").exists() and not (out / "tiny_model_data.cc").exists()
    assert second.name == "again"


def test_without_tflite_micro_the_export_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(micro, "micro_available", lambda: False)
    report = convert(tiny_cnn(), tmp_path / "out", int8=False, latency_runs=2)
    assert report.arena is None and not report.micro["available"]
    assert any("not installed" in note for note in report.notes)
    assert "arena" not in (tmp_path / "out" / "model_model_data.h").read_text()
    with pytest.raises(MicroRuntimeUnavailableError, match="--max-arena"):
        convert(tiny_cnn(), tmp_path / "other", int8=False, max_arena=1 << 20)
    _nothing_left(tmp_path / "other")


# --- errors: clear, early, and nothing left in DIR -------------------------------------


@pytest.fixture
def saved_tiny(tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_cnn().save(path)
    return path


def test_not_a_keras_file(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "notes.keras").write_text("not a model")
    with zipfile.ZipFile(tmp_path / "broken.keras", "w") as z:
        z.writestr("config.json", "{not json")
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    cases = [(tmp_path / "notes.keras", "not a Keras model file"),
             (tmp_path / "weights.h5", "expected a .keras archive"),
             (tmp_path / "broken.keras", "could not be loaded as a Keras model"),
             (tmp_path / "missing.keras", "does not exist")]
    for path, message in cases:
        with pytest.raises(NotAKerasModelError, match=message):
            convert(path, out, calibration=random_images(4, (8, 8, 1)))
        _nothing_left(out)


def test_int8_without_calibration_is_refused_before_anything_runs(saved_tiny, tmp_path):
    with pytest.raises(CalibrationRequiredError, match="hybrid model") as info:
        convert(saved_tiny, tmp_path / "out")
    assert "--no-int8" in str(info.value)
    _nothing_left(tmp_path / "out")


def test_op_tflite_micro_lacks(tmp_path):
    import keras

    model = tiny_cnn(head=keras.layers.UpSampling2D(name="upsample"), name="up")
    with pytest.raises(UnsupportedOpError, match=r"TILE .*upsample \(UpSampling2D\).*Resizing"):
        convert(model, tmp_path / "out", calibration=random_images(8, (8, 8, 1)))
    _nothing_left(tmp_path / "out")


@pytest.mark.parametrize("budget, message", [
    ({"max_arena": 1024}, "over the budget --max-arena 1,024"),
    ({"max_flash": 1000}, "over the flash budget --max-flash 1,000"),
])
def test_budgets(saved_tiny, tmp_path, budget, message):
    with pytest.raises(BudgetExceededError, match=message):
        convert(saved_tiny, tmp_path / "out", calibration=random_images(8, (8, 8, 1)), **budget)
    _nothing_left(tmp_path / "out")


def test_unwritable_or_foreign_output_folder(saved_tiny, tmp_path):
    x = random_images(4, (8, 8, 1))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirError, match="cannot write the output folder"):
        convert(saved_tiny, tmp_path / "a_file" / "out", calibration=x)
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        convert(saved_tiny, tmp_path / "a_file", calibration=x)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputDirError, match="not a tfprune export"):
        convert(saved_tiny, tmp_path / "mine", calibration=x)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


def test_multi_input_and_undefined_input_models_are_refused(tmp_path):
    import keras

    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(tfprune.errors.UnsupportedModelError, match="one input"):
        convert(two, tmp_path / "out", int8=False)
    with pytest.raises(tfprune.errors.UnsupportedModelError, match="no defined inputs"):
        convert(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "out", int8=False)
    _nothing_left(tmp_path / "out")


def test_bad_options(saved_tiny, tmp_path):
    x = random_images(4, (8, 8, 1))
    with pytest.raises(InvalidExportOptionError, match="not a C identifier"):
        convert(saved_tiny, tmp_path / "out", calibration=x, name="my-model")
    with pytest.raises(InvalidExportOptionError, match="max_arena must be a positive integer"):
        convert(saved_tiny, tmp_path / "out", calibration=x, max_arena=0)
    with pytest.raises(InvalidExportOptionError, match="dense_as_conv must be True or False"):
        convert(saved_tiny, tmp_path / "out", calibration=x, dense_as_conv=1)
    with pytest.raises(InvalidExportOptionError, match="latency_clock must be one of"):
        convert(saved_tiny, tmp_path / "out", calibration=x, latency_clock="gpu")
    with pytest.raises(DataError, match="has no labels"):
        convert(saved_tiny, tmp_path / "out", calibration=x, eval_data=x)
    _nothing_left(tmp_path / "out")

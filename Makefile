# Two commands set everything up on a fresh machine with python3 and make:
#   make demo   - the main job, offline, on the embedded default dataset
#   make test   - install and run the tests (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
PYTEST_WORKERS ?= 2

.PHONY: demo test test-slow install bench clean api-docs

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,data,plot]'
	touch $(STAMP)

install: $(STAMP)

# Train, prune with CAMP-HiVe during fit, strip, deploy to TFLite Micro; table + plot in out/demo/.
demo: $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

# docs/api.md from the docstrings (tests/test_docs.py fails when it is stale).
api-docs: $(STAMP)
	$(PY) tools/gen_api_docs.py

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# --- benchmarks: reference models and the tfmot baseline (docs/BENCHMARKS.md) -------------
# tfmot runs only in its own environment: importing it switches TensorFlow to legacy Keras.
TFMOT_VENV ?= .venv-tfmot
TFMOT_PY := $(TFMOT_VENV)/bin/python
TFMOT_STAMP := $(TFMOT_VENV)/.installed
# tensorflow-model-optimization 0.8.0 requires numpy~=1.23, so this environment takes every pin
# of constraints.txt except numpy and ml_dtypes (TensorFlow 2.21 accepts numpy 1.26).
TFMOT_NUMPY ?= 1.26.4
BENCH_SEED ?= 0
TFMOT_SPARSITY ?= 0.75
TFMOT_EPOCHS ?= 5

.PHONY: bench-venv-tfmot bench-dense bench-narrow bench-tfmot

$(TFMOT_STAMP): constraints.txt
	test -x $(TFMOT_PY) || $(PYTHON) -m venv $(TFMOT_VENV)
	$(TFMOT_PY) -m pip install --quiet --upgrade pip
	grep -v -E '^(numpy|ml_dtypes)==' constraints.txt > $(TFMOT_VENV)/constraints.txt
	$(TFMOT_PY) -m pip install --quiet -c $(TFMOT_VENV)/constraints.txt \
		tensorflow tf-keras tensorflow-model-optimization numpy==$(TFMOT_NUMPY)
	touch $(TFMOT_STAMP)

bench-venv-tfmot: $(TFMOT_STAMP)

bench-dense: $(STAMP)
	$(PY) tools/train_dense.py --model resnet8 --epochs 30 --seed $(BENCH_SEED) \
		--export-npz cache/resnet8_dense_seed$(BENCH_SEED)_weights.npz

bench-narrow: $(STAMP)
	$(PY) tools/train_dense.py --model resnet8 --width-mult 0.5 --epochs 30 --seed $(BENCH_SEED)
	$(PY) tools/train_dense.py --model resnet8 --flops 0.25 --epochs 40 --seed $(BENCH_SEED)
	$(PY) tools/train_dense.py --model resnet8 --flops 0.5 --epochs 40 --seed $(BENCH_SEED)

bench-tfmot: bench-dense $(TFMOT_STAMP)
	$(TFMOT_PY) tools/tfmot_baseline.py --weights cache/resnet8_dense_seed$(BENCH_SEED)_weights.npz \
		--sparsity $(TFMOT_SPARSITY) --epochs $(TFMOT_EPOCHS) --seed $(BENCH_SEED) \
		--out cache/tfmot/sparsity$(TFMOT_SPARSITY)_e$(TFMOT_EPOCHS)_seed$(BENCH_SEED)

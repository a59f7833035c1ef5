# sparsepipe - every target creates .venv first when it is missing (fast when present).
# `make help` lists the targets; variables can be overridden: make baseline EPOCHS=50 IMGSZ=320

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sparsepipe-installed
RUNS   ?= runs

MODEL  ?= yolov8n.yaml
DATA   ?= synthetic:preset=demo
EPOCHS ?= 30
IMGSZ  ?= 160
THREADS ?= 2
BENCH_ARGS ?=
SERVE_BENCH_ARGS ?=
MODEL_URI ?=
NAME ?=
DEPLOY_ARGS ?=
KFP_HOST ?=
RECIPE ?= recipes/yolov8n-pruned50.yaml
RECIPE_ARGS ?= num_epochs=8,pruning_start_epoch=0,pruning_end_epoch=5

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-slow data baseline sparsify export evaluate benchmark report bench-sparsify bench-quantize bench bench-serve deploy compile pipeline-local submit sweep images push test-images lock deepsparse-env mlflow-ui clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml images/constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c images/constraints.txt -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install sparsepipe with test extras (idempotent)

demo: $(STAMP) ## whole flow on generated data: data -> train -> export -> evaluate -> benchmark -> report
	$(BIN)/sparsepipe demo --out $(RUNS)/demo --model $(MODEL) --data $(DATA) --epochs $(EPOCHS) --imgsz $(IMGSZ) --threads $(THREADS)
	@echo "report: $(RUNS)/demo/report/report.md (and .html); MLflow: make mlflow-ui"

test: $(STAMP) ## default test suite (real S3/MLflow servers on 127.0.0.1, tiny real training)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) ## slow tests only (long training, full end-to-end runs)
	$(BIN)/python -m pytest -q -m slow

data: $(STAMP) ## generate/validate the dataset into runs/data (DATA=...)
	$(BIN)/sparsepipe data --source $(DATA) --out $(RUNS)/data

baseline: $(STAMP) ## train the baseline on runs/data into runs/baseline (MODEL, EPOCHS, IMGSZ)
	@test -f $(RUNS)/data/result.json || $(MAKE) data
	$(BIN)/sparsepipe train --model $(MODEL) --data $(RUNS)/data --epochs $(EPOCHS) --imgsz $(IMGSZ) --out $(RUNS)/baseline

sparsify: $(STAMP) ## prune runs/baseline with RECIPE (+RECIPE_ARGS) into runs/sparsify
	@test -f $(RUNS)/baseline/result.json || $(MAKE) baseline
	$(BIN)/sparsepipe sparsify --model $(RUNS)/baseline --data $(RUNS)/data --recipe $(RECIPE) --recipe-args '$(RECIPE_ARGS)' --imgsz $(IMGSZ) --out $(RUNS)/sparsify

export: $(STAMP) ## export runs/baseline to ONNX in runs/export
	$(BIN)/sparsepipe export --model $(RUNS)/baseline --imgsz $(IMGSZ) --out $(RUNS)/export

evaluate: $(STAMP) ## mAP of the exported ONNX into runs/evaluate
	$(BIN)/sparsepipe evaluate --model $(RUNS)/export --data $(RUNS)/data --out $(RUNS)/evaluate

benchmark: $(STAMP) ## onnxruntime CPU latency of runs/export into runs/benchmark (THREADS)
	$(BIN)/sparsepipe benchmark --model $(RUNS)/export --threads $(THREADS) --iterations 200 --out $(RUNS)/benchmark

report: $(STAMP) ## comparison table + plot of the steps above into runs/report
	$(BIN)/sparsepipe report --results $(RUNS)/baseline $(RUNS)/export $(RUNS)/evaluate $(RUNS)/benchmark --out $(RUNS)/report

bench-sparsify: $(STAMP) ## plateaued baseline (60 epochs + 15 low-LR, synthetic:preset=bench, 320 px) + plain/pruned50/pruned75 (30 each) with CIs and curves; resumable, content-keyed (~3.5 h on 2 cores)
	$(BIN)/python benchmarks/sparsify_bench.py --out $(RUNS)/bench-sparsify --epochs 60 --prune-epochs 30

bench-quantize: $(STAMP) ## INT8/sparsity on every CPU engine vs ultralytics' own INT8 exports, one interleaved run (after bench-sparsify)
	$(BIN)/python -m pip install --quiet -c images/constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/quantize_bench.py --out $(RUNS)/bench-quantize

bench: $(STAMP) ## the full comparison: every variant x engine at 640/320, 1/2 threads, mAP with CIs, Pareto plot -> docs/benchmarks.md, then the serving load test (resumable, content-keyed)
	@$(BIN)/python -c "import nncf" 2>/dev/null || $(BIN)/python -m pip install --quiet -c images/constraints.txt -e '.[bench]'
	@test -f $(RUNS)/bench-sparsify/sparsify.json || $(MAKE) bench-sparsify
	$(BIN)/python benchmarks/bench.py --out $(RUNS)/bench --sparsify $(RUNS)/bench-sparsify $(BENCH_ARGS)
	$(MAKE) bench-serve

bench-serve: $(STAMP) ## load test of sparsepipe serve on loopback: N clients below/above the queue bound, p50/p99, 503s (SERVE_BENCH_ARGS=...)
	$(BIN)/python benchmarks/load_test.py $(SERVE_BENCH_ARGS)

deploy: $(STAMP) ## KServe InferenceService YAML into runs/deploy: make deploy MODEL_URI=models:/name@alias NAME=detector [DEPLOY_ARGS=--apply]
	@test -n "$(MODEL_URI)" -a -n "$(NAME)" || { echo "error: set MODEL_URI (models:/name@alias or s3://...) and NAME, e.g. make deploy MODEL_URI=models:/detector@champion NAME=detector"; exit 2; }
	$(BIN)/sparsepipe deploy '$(MODEL_URI)' --name $(NAME) --out $(RUNS)/deploy $(DEPLOY_ARGS)

compile: $(STAMP) ## compile the Kubeflow pipelines into pipelines/compiled/*.yaml (golden files)
	$(BIN)/python -m pipelines.compile

pipeline-local: $(STAMP) ## main pipeline through kfp.local with a local SeaweedFS + MLflow (started, then stopped)
	$(BIN)/python -m pipelines.run_local --out $(RUNS)/kfp-local --model $(MODEL) --data $(DATA) --epochs $(EPOCHS) --imgsz $(IMGSZ) --threads $(THREADS) --recipe $(RECIPE) --recipe-args '$(RECIPE_ARGS)'

submit: $(STAMP) ## submit the main pipeline: make submit KFP_HOST=http://localhost:8080
	@test -n "$(KFP_HOST)" || { echo "error: set KFP_HOST, e.g. make submit KFP_HOST=http://localhost:8080"; exit 2; }
	$(BIN)/python -m pipelines.compile --check
	$(BIN)/python -m pipelines.submit --host $(KFP_HOST) --pipeline main --param model=$(MODEL) --param data_source=$(DATA) --param epochs=$(EPOCHS) --param imgsz=$(IMGSZ) --param benchmark_threads=$(THREADS) --param recipe=$(RECIPE) --param recipe_args='$(RECIPE_ARGS)'

sweep: $(STAMP) ## submit the sweep pipeline: make sweep KFP_HOST=http://localhost:8080
	@test -n "$(KFP_HOST)" || { echo "error: set KFP_HOST, e.g. make sweep KFP_HOST=http://localhost:8080"; exit 2; }
	$(BIN)/python -m pipelines.compile --check
	$(BIN)/python -m pipelines.submit --host $(KFP_HOST) --pipeline sweep --param model=$(MODEL) --param data_source=$(DATA) --param epochs=$(EPOCHS) --param imgsz=$(IMGSZ) --param benchmark_threads=$(THREADS)

images: ## build sparsepipe-{cpu,cuda,deepsparse}:<version> with docker/podman/buildah (offline: BASE_IMAGE=localhost/sparsepipe-base:bookworm HOST_PIP=1)
	$(PYTHON) images/build.py build all

push: ## tag and push the three images: make push REGISTRY=ghcr.io/sparsepipe
	$(PYTHON) images/build.py push all

test-images: $(STAMP) ## build the CPU image and run data/train/export/benchmark inside it (opt-in, needs an engine)
	SPARSEPIPE_TEST_IMAGES=1 $(BIN)/python -m pytest -q -s -m images tests/test_images.py

lock: $(STAMP) ## after a dependency change: freeze .venv into images/constraints.txt + requirements.txt
	$(BIN)/python images/lock.py

deepsparse-env: ## optional DeepSparse 1.8 engine in its own venv .venv-deepsparse (community licence: non-production)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; DeepSparse 1.8 needs Python 3.11 (make deepsparse-env PYTHON=/path/to/python3.11)"; exit 2; }
	@test -x .venv-deepsparse/bin/python || $(PYTHON) -m venv .venv-deepsparse
	.venv-deepsparse/bin/python -m pip install --quiet --upgrade pip
	.venv-deepsparse/bin/python -m pip install --quiet -c images/deepsparse/constraints.txt deepsparse onnx numpy
	.venv-deepsparse/bin/python -m pip check
	.venv-deepsparse/bin/python -c "import deepsparse, onnx, numpy; print('deepsparse', deepsparse.__version__, 'onnx', onnx.__version__, 'numpy', numpy.__version__)"

mlflow-ui: $(STAMP) ## open the local MLflow store (./mlruns) at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove runs/ and caches (keeps .venv and mlruns/)
	rm -rf $(RUNS) .pytest_cache .hypothesis

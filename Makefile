# Two commands do everything on a fresh machine:
#   make ablations   the main job: every seed study at PROFILE (default quick), then the report site
#   make test        every check CI runs
# Others: make lab (JupyterLab), make site (rebuild the site from RUNS), make smoke (= ablations PROFILE=smoke)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
# papermill kernels start faster without this import-time check; keep OMP quiet on 2 cores
export PYDEVD_DISABLE_FILE_VALIDATION := 1

PROFILE ?= quick
# seeds per value: empty = each plan's own `seeds`; SEEDS=N overrides them (the results pages say which)
SEEDS ?=
WORKERS ?=
RUNS ?= runs/$(PROFILE)
SITE ?= _site
PORT ?= 8888
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: ablations fid-extractor smoke test cached-artefact-tests site lab data browser katex venv check-sync check-clean nbtest pytest clean-build help
help:
	@sed -n '1,6p' Makefile

# ---- environment -----------------------------------------------------------------------------
$(VENV)/.installed: settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,mlflow]"
	@# jupyterlab pulls rfc3987-syntax, which costs ~2.6 s at every nbformat import (every papermill start)
	-$(BIN)/python -m pip uninstall -y -q rfc3987-syntax
	@touch $@
venv: $(VENV)/.installed

# The default data: Fashion-MNIST from Debian's package where apt is available (offline-safe);
# elsewhere torchvision downloads it at first use (see nbs/foundation/01_data.ipynb).
data:
	@if [ -f $(FMNIST_DEB) ]; then echo "Fashion-MNIST: $(dir $(FMNIST_DEB))"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  && echo "Fashion-MNIST installed from Debian's dataset-fashion-mnist"; \
	else echo "Fashion-MNIST: no Debian package here; torchvision will download it at first use"; fi

# The site's math renderer: KaTeX from Debian's libjs-katex, copied into every site (no page loads from a CDN).
# Elsewhere point $$CONTRASTIVE_ABLATIONS_KATEX at a KaTeX dist folder; without one, formulas show as TeX.
KATEX_DEB := /usr/share/javascript/katex/katex.min.js
katex:
	@if [ -f $(KATEX_DEB) ] || [ -n "$${CONTRASTIVE_ABLATIONS_KATEX:-}" ]; then true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q libjs-katex || (apt-get update -q && apt-get install -y -q libjs-katex)) >/dev/null \
	  && echo "KaTeX installed from Debian's libjs-katex" \
	  || echo "libjs-katex could not be installed: the site's formulas will show as TeX"; \
	else echo "no KaTeX and no apt: the site's formulas will show as TeX (set CONTRASTIVE_ABLATIONS_KATEX)"; fi

# Headless Chromium for the site's browser test (skipped with a reason where it cannot be installed), and KaTeX
browser: katex
	@if command -v chromium >/dev/null; then true; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null \
	  || echo "chromium could not be installed: the browser test will be skipped"; \
	else echo "no chromium and no apt: the browser test will be skipped"; fi

# ---- the main job ----------------------------------------------------------------------------
ablations: venv data fid-extractor
	$(BIN)/python -m contrastive_ablations sweep plans/*.yaml --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) \
	  $(if $(WORKERS),--workers $(WORKERS)) --out $(RUNS)
	$(MAKE) --no-print-directory site
	$(BIN)/python -m contrastive_ablations report $(RUNS)

# CLEL's FID reads 1x28x28 images through a feature extractor: the profile's (smoke: the 'tiny' Fashion-MNIST
# classifier, seconds; quick: Inception-v3 when its checked weights are here, else the 'full' classifier, minutes;
# paper: Inception-v3). Make it ready (trained once, checked, cached) before the sweep, so no run trains it.
fid-extractor: venv data
	$(BIN)/python -c "import sys; from contrastive_ablations.methods.clel.train import prepare_fid_extractor; sys.exit(prepare_fid_extractor('$(PROFILE)'))"

smoke:
	$(MAKE) --no-print-directory ablations PROFILE=smoke SEEDS=1

site: venv katex
	$(BIN)/python -m contrastive_ablations site --runs $(RUNS) --out $(SITE)

lab: venv data
	$(BIN)/jupyter lab --no-browser --allow-root --ip=127.0.0.1 --port=$(PORT) --notebook-dir=$(CURDIR)

# ---- checks (CI runs exactly `make test`) ------------------------------------------------------
test: venv data browser check-sync check-clean nbtest pytest
	@echo "make test: all checks passed"

# The package is generated from nbs/: exporting again must change nothing.
check-sync: venv
	@before=$$(find contrastive_ablations -name '*.py' -type f | sort | xargs sha1sum); \
	$(BIN)/nbdev_export; \
	after=$$(find contrastive_ablations -name '*.py' -type f | sort | xargs sha1sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL check-sync: nbdev_export changed the package; it was out of sync with nbs/:"; \
	  diff <(echo "$$before") <(echo "$$after") || true; exit 1; fi; \
	echo "check-sync: package and notebooks in sync"

# Notebooks are committed clean (no outputs, no execution counts), papermill's tags kept.
check-clean: venv
	@nbs=$$(find nbs ablation_nbs tests examples -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort); \
	before=$$(sha1sum $$nbs); \
	$(BIN)/nbdev_clean; $(BIN)/nbdev_clean --fname ablation_nbs; $(BIN)/nbdev_clean --fname examples; \
	if [ -d tests/assets ]; then $(BIN)/nbdev_clean --fname tests/assets; fi; \
	after=$$(sha1sum $$nbs); \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL check-clean: nbdev_clean changed these notebooks (commit them clean):"; \
	  diff <(echo "$$before") <(echo "$$after") || true; exit 1; fi; \
	$(BIN)/python tests/check_notebooks.py $$nbs

# two notebooks at a time on two cores: one torch thread each, or they oversubscribe the cores
nbtest: venv
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

# two test processes (pytest-xdist), a test file each at a time: most tests wait on kernels, sweeps and Slurm, so two
# keep the two cores busy; a file's module fixtures (a site build, a Slurm cluster) are made once, in one process
pytest: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# What reads the cached artefacts (FID extractors and statistics) that the main job leaves: CI runs it after
# `make ablations PROFILE=smoke` on an empty cache, so the two commands are checked in both orders.
cached-artefact-tests: venv data
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --path nbs/methods/clel/24_clel.ipynb
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --path nbs/methods/clel/25_clel_metrics.ipynb
	$(BIN)/python -m pytest -q tests/test_clel_metrics.py tests/test_cache.py

clean-build:
	rm -rf _proc _docs $(SITE) .pytest_cache

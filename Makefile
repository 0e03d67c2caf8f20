# sparsing-law: `make figures` (train, measure, fit, draw; PROFILE=cpu by default) and `make test`.
# `make help` lists every target.

PROFILE ?= cpu
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS_ROOT := $(or $(SPARSINGLAW_RUNS),runs)
RESULTS_ROOT := $(or $(SPARSINGLAW_RESULTS),results)
FIGURES_ROOT := $(or $(SPARSINGLAW_FIGURES),figures)
# make splits words at spaces: a folder with one would make `rm -rf` and the targets name other paths
ifneq ($(words $(RUNS_ROOT)) $(words $(RESULTS_ROOT)) $(words $(FIGURES_ROOT)),1 1 1)
$(error SPARSINGLAW_RUNS, SPARSINGLAW_RESULTS or SPARSINGLAW_FIGURES holds a space ('$(SPARSINGLAW_RUNS)', '$(SPARSINGLAW_RESULTS)', '$(SPARSINGLAW_FIGURES)'): the Makefile cannot use such a path; pick one without spaces (the python -m sparsinglaw commands accept it))
endif
EXEC := $(RUNS_ROOT)/$(PROFILE)/notebooks
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED := $(patsubst notebooks/%,$(EXEC)/%,$(NOTEBOOKS))
LIB := $(wildcard lib/sparsinglaw/*.py)

export SOURCE_DATE_EPOCH := 0
# this checkout's package, whichever checkout a shared venv's editable install points at: the package finds
# its runs, results and figures folders from its own location (runs.repo_root)
export PYTHONPATH := $(CURDIR)/lib$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := true

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: FORCE help setup test test-fast test-min compare-min figures replot verify report bench lint format strip clean clean-runs runs measure compute fit

help: ## list every target
	@echo "usage: make TARGET [PROFILE=smoke|cpu|cpu-long|gpu|paper]   (PROFILE=$(PROFILE))"
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# The venv is installed again when requirements.txt or pyproject.toml change in content (a checksum in the
# stamp), not in time: a fresh clone's newer files would reinstall a venv that another checkout shares
# (VENV=...), and its editable install would then point at the clone.
DEPS_SUM := $(shell cat requirements.txt pyproject.toml 2>/dev/null | cksum)
ifneq ($(DEPS_SUM),$(shell cat $(STAMP) 2>/dev/null))
$(STAMP): FORCE
endif
$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sparsing-law)" >/dev/null
	@echo '$(DEPS_SUM)' > $@

setup: $(STAMP) ## create or refresh .venv from requirements.txt and install the package (editable)

test: $(STAMP) ## run the whole test suite (unit tests + every notebook on the smoke profile)
	$(PY) -m pytest

test-fast: $(STAMP) ## run the unit tests only (no notebooks)
	$(PY) -m pytest -m "not notebooks"

# The oldest supported versions (requirements-min.txt, the floors in pyproject.toml) in their own venv.
VENV_MIN ?= .venv-min
STAMP_MIN := $(VENV_MIN)/.installed
DEPS_MIN_SUM := $(shell cat requirements-min.txt pyproject.toml 2>/dev/null | cksum)
ifneq ($(DEPS_MIN_SUM),$(shell cat $(STAMP_MIN) 2>/dev/null))
$(STAMP_MIN): FORCE
endif
$(STAMP_MIN):
	@test -x $(VENV_MIN)/bin/python || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-min.txt
	$(VENV_MIN)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(VENV_MIN)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sparsing-law, oldest versions)" >/dev/null
	@echo '$(DEPS_MIN_SUM)' > $@

VERSIONS := runs/_versions
PYVER := import platform; print(platform.python_version())
test-min: $(STAMP_MIN) $(STAMP) ## the test suite on the oldest supported versions (requirements-min.txt, ~3 GB: torch's CUDA build), then the smoke tables of both venvs compared
	$(VENV_MIN)/bin/python -c "import sys, torch, numpy, pandas; print('python', sys.version.split()[0], '| torch', torch.__version__, '| numpy', numpy.__version__, '| pandas', pandas.__version__)"
	$(VENV_MIN)/bin/python -m pytest
	@a=$$($(PY) -c "$(PYVER)"); b=$$($(VENV_MIN)/bin/python -c "$(PYVER)"); if [ "$$a" = "$$b" ]; then $(MAKE) --no-print-directory compare-min; \
	else echo "smoke tables not compared: the default corpus is the interpreter's own standard library, and $(VENV_MIN) runs Python $$b, $(VENV) $$a"; fi

# $(call smoke_in,NAME,PYTHON): the smoke profile's model stages with PYTHON into $(VERSIONS)/NAME
smoke_in = SPARSINGLAW_RUNS=$(VERSIONS)/$(1) SPARSINGLAW_RESULTS=$(VERSIONS)/$(1)/results $(2) -m sparsinglaw compute \
  --profile smoke --no-progress >$(VERSIONS)/$(1).log 2>&1 || { cat $(VERSIONS)/$(1).log; exit 1; }
compare-min: $(STAMP_MIN) $(STAMP) ## the smoke profile's tables of the pinned venv and of the oldest versions compared byte for byte (part of test-min)
	rm -rf $(VERSIONS) && mkdir -p $(VERSIONS)
	$(call smoke_in,pinned,$(PY))
	$(call smoke_in,min,$(VENV_MIN)/bin/python)
	@diff -r -x '*.meta.json' $(VERSIONS)/pinned/results/smoke $(VERSIONS)/min/results/smoke >/dev/null \
	  && echo "smoke profile: every results table of the oldest versions is byte for byte the pinned venv's ($(VERSIONS)/*/results/smoke)" \
	  || { echo "error: the smoke tables differ between the pinned and the oldest versions: diff -r -x '*.meta.json' $(VERSIONS)/pinned/results/smoke $(VERSIONS)/min/results/smoke" >&2; exit 1; }

# a PROFILE without its configs/PROFILE.yaml (an empty one, one with a /, a space or a glob character
# included) stops before any setup or deletion, naming the profiles there: `make clean-runs PROFILE=` would
# otherwise remove the whole runs root, PROFILE='*' every profile's runs, PROFILE='cpu*' cpu-long's too
PROFILE_GOALS := figures replot verify report measure compute fit runs clean-runs nb-%
NOT_A_NAME = $(or $(filter-out 1,$(words $(1))),$(findstring /,$(1)),$(findstring *,$(1)),$(findstring ?,$(1)),$(findstring [,$(1)))
ifneq ($(filter $(PROFILE_GOALS),$(MAKECMDGOALS)),)
PROFILES = $(sort $(patsubst configs/%.yaml,%,$(wildcard configs/*.yaml)))
ifneq ($(call NOT_A_NAME,$(PROFILE)),)
$(error PROFILE='$(PROFILE)' is not a profile: a profile is one name without a space, /, *, ? or [; profiles: $(PROFILES))
endif
ifeq ($(wildcard configs/$(PROFILE).yaml),)
$(error configs/$(PROFILE).yaml not found: PROFILE=$(PROFILE) is not a profile; profiles: $(PROFILES))
endif
endif
# switches: an unknown value stops (REFIT=false would otherwise refit; FROM=replott run every notebook)
ifneq ($(filter fit,$(MAKECMDGOALS)),)
ifneq ($(filter-out 0 1,$(REFIT)),)
$(error REFIT='$(REFIT)': REFIT=1 fits again, REFIT=0 (or none) reuses the cached fits)
endif
endif
ifneq ($(filter report,$(MAKECMDGOALS)),)
ifneq ($(filter-out replot,$(FROM)),)
$(error FROM='$(FROM)': FROM=replot reports make replot's notebooks; without FROM, make figures' (run first where missing))
endif
endif

# the results and figures folders the executed notebooks wrote into: pointing SPARSINGLAW_RESULTS or
# SPARSINGLAW_FIGURES elsewhere makes them out of date (the file changes only when a folder does)
ROOTS := $(EXEC)/.roots
$(ROOTS): FORCE
	@mkdir -p $(@D); r='$(abspath $(RESULTS_ROOT)) $(abspath $(FIGURES_ROOT))'; \
	  test "$$(cat $@ 2>/dev/null)" = "$$r" || echo "$$r" > $@
FORCE:

$(EXEC)/%.ipynb: notebooks/%.ipynb configs/$(PROFILE).yaml $(LIB) $(STAMP) $(ROOTS)
	@mkdir -p $(EXEC)
	$(PY) -m sparsinglaw.notebooks run $< $(abspath $@) --profile $(PROFILE) --log-output --cwd $(CURDIR)

figures: $(EXECUTED) ## execute every notebook for PROFILE: train, measure, fit, write figures/PROFILE

REPLOT := $(RUNS_ROOT)/$(PROFILE)/replot
RESULTS := $(RESULTS_ROOT)/$(PROFILE)
# the README's claims block shows the committed cpu/gpu tables: a results folder elsewhere leaves it alone
COMMITTED := $(filter $(CURDIR)/results,$(abspath $(RESULTS_ROOT)))
README_PROFILE := $(filter cpu gpu,$(PROFILE))
README_CLAIMS := $(if $(and $(README_PROFILE),$(COMMITTED)),--readme README.md,)

replot: $(STAMP) ## redraw every figure of PROFILE from the committed results/PROFILE tables (no training)
	@test -f $(RESULTS)/sparsity.csv || { echo "error: $(RESULTS)/sparsity.csv is missing: nothing to replot (make figures PROFILE=$(PROFILE) or make compute PROFILE=$(PROFILE) computes it)" >&2; exit 1; }
	@mkdir -p $(REPLOT)
	@set -e; for nb in $(NOTEBOOKS); do \
	  $(PY) -m sparsinglaw.notebooks run $$nb $(abspath $(REPLOT))/$$(basename $$nb) --profile $(PROFILE) --replot --cwd $(CURDIR); \
	done

verify: $(STAMP) ## check every claim of the paper on results/PROFILE: PASS/FAIL/INCONCLUSIVE table (cpu/gpu: also README's block, unless SPARSINGLAW_RESULTS points elsewhere)
	$(PY) -m sparsinglaw verify --profile $(PROFILE) $(README_CLAIMS)
	@$(if $(and $(README_PROFILE),$(if $(COMMITTED),,yes)),echo "README.md left as it is: SPARSINGLAW_RESULTS=$(SPARSINGLAW_RESULTS) is not this repository's results folder",:)

# FROM=replot: the notebooks make replot wrote, executed nothing new; else those of make figures (run first if missing)
REPORT_NBS := $(if $(filter replot,$(FROM)),$(patsubst notebooks/%,$(REPLOT)/%,$(NOTEBOOKS)),$(EXECUTED))
report: $(STAMP) $(if $(filter replot,$(FROM)),,$(EXECUTED)) ## one HTML file of the executed notebooks of PROFILE (runs/PROFILE/report.html); runs make figures first where needed, FROM=replot uses make replot's
	@for nb in $(REPORT_NBS); do test -f $$nb || { echo "error: $$nb is missing: run make replot PROFILE=$(PROFILE) first" >&2; exit 1; }; done
	$(PY) -m sparsinglaw.notebooks report $(REPORT_NBS) -o $(RUNS_ROOT)/$(PROFILE)/report.html --title "sparsing-law: profile $(PROFILE)"

# make nb-NN with no notebooks/NN_*.ipynb stops before any setup, naming the numbers there
NB_NUMBERS := $(foreach n,$(NOTEBOOKS),$(firstword $(subst _, ,$(notdir $(n)))))
NB_MISSING := $(foreach g,$(filter nb-%,$(MAKECMDGOALS)),$(if $(wildcard notebooks/$(g:nb-%=%)_*.ipynb),,$(g)))
ifneq ($(NB_MISSING),)
$(error no notebook for $(NB_MISSING): make nb-NN takes NN from $(NB_NUMBERS))
endif
nb-%: configs/$(PROFILE).yaml $(STAMP) ## execute one notebook, e.g. make nb-01 PROFILE=smoke
	@nb=$$(ls notebooks/$*_*.ipynb) && mkdir -p $(EXEC) && \
	$(PY) -m sparsinglaw.notebooks run $$nb $(abspath $(EXEC))/$$(basename $$nb) --profile $(PROFILE) --log-output --cwd $(CURDIR)

measure: $(STAMP) ## measure PPL-p% sparsity on every checkpoint of PROFILE (trains missing runs first)
	$(PY) -m sparsinglaw train --profile $(PROFILE)
	$(PY) -m sparsinglaw measure --profile $(PROFILE)

compute: $(STAMP) ## the model stages of PROFILE without notebooks (train, measure, Pareto, sparse inference) -> results/PROFILE; then make replot
	$(PY) -m sparsinglaw compute --profile $(PROFILE)

fit: $(STAMP) ## fit every law on results/PROFILE (Eq. 4/5, width-depth, scale, convergence; cached; REFIT=1: recompute) and print them
	$(PY) -m sparsinglaw fit --profile $(PROFILE)$(if $(filter 1,$(REFIT)), --refit)

runs: $(STAMP) ## list the runs of PROFILE and their state
	$(PY) -m sparsinglaw runs --profile $(PROFILE)

bench: $(STAMP) ## training tokens/s (cpu reference run; on a GPU also the probe's 1M and 108M shapes) and PPL-1% fast vs reference
	$(PY) bench/train_speed.py
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	$(PY) bench/trainer_vs_probe.py --shapes 1M,108M $(if $(PROBE),--probe $(PROBE),); \
	else echo "(no GPU: the trainer-vs-probe benchmark is skipped)"; fi
	@ck=$$(ls $(RUNS_ROOT)/cpu/relu-s4-*/ckpt_0*.pt 2>/dev/null | tail -n 1); \
	if [ -n "$$ck" ]; then $(PY) bench/ppl_p_speed.py --checkpoint $$ck --eval-tokens 32768 --search both; \
	else echo "(no trained cpu checkpoint: PPL-1% benchmark on a random model; run make figures first)"; \
	$(PY) bench/ppl_p_speed.py --synthetic; fi

lint: $(STAMP) ## ruff check
	$(PY) -m ruff check lib tests bench

format: $(STAMP) ## ruff format
	$(PY) -m ruff format lib tests bench

strip: $(STAMP) ## strip outputs and execution counts from notebooks/
	$(PY) -m sparsinglaw.notebooks strip notebooks

clean: ## remove executed notebooks and caches (keeps checkpoints)
	rm -rf $(RUNS_ROOT)/*/notebooks $(RUNS_ROOT)/*/replot .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

clean-runs: ## delete runs/PROFILE (checkpoints and logs of this profile only; SPARSINGLAW_RUNS/PROFILE where that is set)
	rm -rf -- '$(RUNS_ROOT)/$(PROFILE)'

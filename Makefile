# lramlab — the user's two commands: `make demo` and `make test`.
# Both create .venv if missing and install what they need. torch is installed first and
# pinned (a CPU build on a machine without CUDA); an already installed torch (say a CUDA
# build a GPU user put there first) is never replaced.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: demo test install install-test install-all suites venv clean-venv bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"

# A stamp per extra set, remade when pyproject.toml changes.
$(VENV)/.stamp-%: pyproject.toml | venv
	$(PIP) install -q -e ".[$(subst +,$(comma),$*)]" "numpy<2"
	@touch $@

comma := ,
install: $(VENV)/.stamp-models
install-test: $(VENV)/.stamp-all suites
install-all: $(VENV)/.stamp-all suites

# Composuite, Mimicgen and the robosuite task zoo are not on PyPI: copy them from $(VENDOR) when it
# is there (else clone upstream; never fails the install) onto the venv's path. Cheap when nothing
# changed, so it runs every time. README: "Robotics suites".
VENDOR ?= ../shared/vendor
suites: $(VENV)/.stamp-all
	$(PY) -m lramlab.envs.suites --vendor $(VENDOR)

test: install-test
	$(PY) -m pytest -q tests

demo: install-all
	$(VENV)/bin/lramlab pipeline --out $(DEMO_OUT)

bench: install-all
	$(VENV)/bin/lramlab bench data
	$(VENV)/bin/lramlab bench latency

clean-venv:
	rm -rf $(VENV)

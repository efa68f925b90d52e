# Fresh machine: `make demo` sets up .venv and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EDGE_VENV := .venv-edge
# Edge tests that also run on the edge install (no torch, no onnx), against the installed package.
EDGE_TESTS := tests/test_station_parts.py tests/test_station.py tests/test_protocol.py tests/test_fusion.py \
	tests/test_head.py tests/test_preprocess.py tests/test_bundle.py tests/test_hostile.py tests/test_security.py \
	tests/test_runtimes.py tests/test_enroll.py tests/test_api.py tests/test_detect.py tests/test_layout.py \
	tests/test_shadow.py tests/test_plant.py tests/test_item_folders.py

.PHONY: setup demo test edge-check lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,dev,openvino]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sortline demo $(ARGS)

# Each test once where it can run: the edge install's run records what passed there, and the
# desktop run skips those (tests/conftest.py) and runs the rest, the demo, browsers and OpenVINO.
test: $(STAMP) edge-check lint
	$(BIN)/pytest -q tests --skip-passed $(EDGE_VENV)/passed.txt

# A plain `pip install .` (no extras) must give a working edge runtime without torch.
edge-check:
	rm -rf $(EDGE_VENV)
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install --quiet -c constraints.txt .
	cd /tmp && $(CURDIR)/$(EDGE_VENV)/bin/python -c "import importlib, pkgutil, importlib.util as u; \
		import sortline.edge_runtime as e, sortline.hardware as h; \
		mods = [importlib.import_module(m.name) for p in (e, h) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.') \
		        if not m.name.endswith('.__main__')]; \
		assert u.find_spec('torch') is None and u.find_spec('openvino') is None; \
		print(f'edge install OK: no torch, no OpenVINO, {len(mods)} runtime modules import')"
	$(EDGE_VENV)/bin/sortline --help > /dev/null
	$(EDGE_VENV)/bin/pip install --quiet -c constraints.txt pytest pytest-timeout hypothesis
	$(EDGE_VENV)/bin/python -m pytest -q -p no:cacheprovider --record-passed $(EDGE_VENV)/passed.txt $(EDGE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(EDGE_VENV) build *.egg-info demo-out

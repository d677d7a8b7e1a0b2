# The two entry points a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The demo: a generated IEMOCAP-shaped corpus; a tiny HuBERT given a short
# self-supervised pretraining on a corpus of its own (other speakers, as HuBERT
# is pretrained on LibriSpeech: no test session is in the encoder); then
# search_spaces/smoke.yaml with its baselines on local Ray, with a local MLflow
# store under $(DEMO_DIR)/study.
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(BIN)/ser-study demo-data $(DEMO_DIR)/corpus
	$(BIN)/ser-study prepare $(DEMO_DIR)/corpus --out $(DEMO_DIR)/manifest.csv
	$(BIN)/ser-study demo-data $(DEMO_DIR)/pretraining-corpus --seed 1 --utterances-per-session 100
	$(BIN)/ser-study prepare $(DEMO_DIR)/pretraining-corpus --out $(DEMO_DIR)/pretraining.csv
	$(BIN)/ser-study tiny-encoder $(DEMO_DIR)/encoder --pretrain-on $(DEMO_DIR)/pretraining.csv
	$(BIN)/ser-study run search_spaces/smoke.yaml --study-dir $(DEMO_DIR)/study \
		--set data.manifest=$(DEMO_DIR)/manifest.csv --set encoder=$(DEMO_DIR)/encoder

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

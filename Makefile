# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml scripts/setup_env.sh
	rm -rf $(VENV)
	bash scripts/setup_env.sh $(VENV)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python jobs/pipeline.py --config local --output outputs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

.PHONY: install demo test

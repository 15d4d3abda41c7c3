# hybrid-rag: the Dagster webserver and daemon (CPU). Built by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    HF_HOME=/app/data/hf

WORKDIR /app

# The pins of constraints.txt, as `make setup` uses them. The CPU build of torch first (the version pinned there,
# from PyTorch's CPU index), so that installing the project does not pull the CUDA wheels.
COPY constraints.txt ./
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch

# Editable install: the code location runs from /app, next to corpora.yaml and workspace.yaml.
COPY pyproject.toml README.m[d] ./
COPY retrieval ./retrieval
COPY evals ./evals
COPY assets ./assets
COPY orchestration ./orchestration
RUN pip install -c constraints.txt -e . dagster-postgres

COPY corpora.yaml workspace.yaml ./
COPY docker/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
RUN mkdir -p data/dropbox

EXPOSE 3000
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]

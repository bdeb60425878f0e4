# The API image: FastAPI + the shared core. No torch, no model: it only stores uploads,
# writes rows and sends page ids to Redis. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t htrq-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HTRQ_STORAGE_DIR=/data/blobs

WORKDIR /app
# Only what the API runs: the worker package (and its model) stays out of this image.
COPY pyproject.toml README.md ./
# Dependencies pinned with their hashes (requirements/README.md), then htrq without any.
COPY requirements/api.txt ./requirements/api.txt
RUN pip install --require-hashes -r requirements/api.txt
COPY htrq ./htrq
COPY api ./api
COPY migrations ./migrations
RUN pip install --no-deps ".[api]" && useradd --uid 10001 --create-home htrq \
    && mkdir -p /data/blobs && chown htrq /data/blobs
USER htrq

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["htrq", "api", "--host", "0.0.0.0", "--port", "8000"]

# The worker image: CUDA runtime, a CUDA build of torch, the model and the batch task.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t htrq-worker .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# The torch build, pinned as everywhere else (scripts/setup): the CUDA wheels by default;
# docker/compose.cpu.yml builds the CPU ones (TORCH_INDEX=https://download.pytorch.org/whl/cpu).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# No HF_HUB_OFFLINE: HTRQ_MODEL=microsoft/trocr-base-handwritten downloads on first start
# (mount a volume on /home/htrq/.cache/huggingface to keep it).
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH \
    HTRQ_DEVICE=cuda HTRQ_DTYPE=float16 HTRQ_STORAGE_DIR=/data/blobs

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# torch first, from the CUDA wheel index, so the worker extra finds it satisfied.
RUN pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX"

WORKDIR /app
COPY pyproject.toml README.md ./
# Dependencies pinned with their hashes (requirements/README.md; torch and its CUDA libraries
# came above), then htrq without any. The trainer's image (compose's `trainer` service builds
# with TRAIN=1) takes the lock that adds the train extra (Seq2SeqTrainer's accelerate, the
# synthetic-line tools training imports).
ARG TRAIN=0
COPY requirements/worker.txt requirements/trainer.txt ./requirements/
RUN if [ "$TRAIN" = 1 ]; then lock=trainer; else lock=worker; fi \
    && pip install --require-hashes -r "requirements/$lock.txt"
COPY htrq ./htrq
COPY api ./api
COPY migrations ./migrations
COPY worker ./worker
RUN pip install --no-deps . && useradd --uid 10001 --create-home htrq \
    && mkdir -p /data/blobs && chown htrq /data/blobs
USER htrq

# Alive if the worker answers a Celery ping on its broker.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD celery -A worker.serving.app inspect ping --destination "celery@$HOSTNAME" --timeout 10 || exit 1
CMD ["htrq", "worker", "--hostname", "celery@%h"]

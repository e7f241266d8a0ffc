# syntax=docker/dockerfile:1
#
# The gateway image: the `gateway` package on a slim Python 3.11, run as a non-root user.
#
#   docker build -t llm-gateway .
#   # the demo (simulated engines, part of the package): no GPU, no model files
#   docker run --rm -p 127.0.0.1:8000:8000 -e GATEWAY_CONFIG=/usr/share/gateway/config/demo.yaml llm-gateway
#   # your config, mounted where GATEWAY_CONFIG points
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/gateway.yaml:/etc/gateway/config.yaml:ro" llm-gateway
#
# Config: /etc/gateway/config.yaml (GATEWAY_CONFIG). Working directory, where relative paths
# of the config land (sqlite ledger `sqlite:///var/usage.db`, engine logs `var/logs`):
# /var/lib/gateway, writable by the gateway user; mount a volume there to keep them.
#
# Engines are not in this image. Two ways to run them:
#  - as separate containers, listed in the config as `endpoints:` (deploy/compose.gpu.yaml,
#    deploy/kubernetes/);
#  - in one container with the gateway spawning them: deploy/Dockerfile.vllm builds
#    FROM vllm/vllm-openai with this package added.
# See deploy/README.md.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The context is only what .dockerignore lets through: pyproject.toml, README.md, gateway/, config/.
COPY . .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir .


FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    GATEWAY_CONFIG=/etc/gateway/config.yaml \
    GATEWAY_HEALTH_URL=http://127.0.0.1:8000/health

RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway /var/lib/gateway \
 && chown 10001:10001 /var/lib/gateway

COPY --from=build /opt/venv /opt/venv
# Example configs (demo.yaml runs the simulated engines): /usr/share/gateway/config/.
COPY config/ /usr/share/gateway/config/

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /var/lib/gateway

# The tokenizer table ships inside the package: prove it loads with no network at all.
RUN --network=none python -c "from gateway.tokens import count_text; assert count_text('hello world') == 2" \
 && gateway check --config /usr/share/gateway/config/demo.yaml

EXPOSE 8000

# No curl in the slim image: Python's urllib; a non-200 answer raises and fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTH_URL'], timeout=4)"]

# Binds 0.0.0.0 inside the container; publish the port on the host as narrowly as you need.
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

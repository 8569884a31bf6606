# The lampwatch image: gateway, simulator and ops commands (lampwatch-gateway, lampwatch-sim,
# lampwatch-ingest, lampwatch-edge). docker-compose.yml picks the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY edge ./edge
COPY gateway ./gateway
COPY ingest ./ingest
COPY simulator ./simulator
RUN pip install ".[grafana]" \
 && useradd --system --uid 10001 --home-dir /var/lib/lampwatch --create-home lampwatch

# State (the gateway's disk spool and alarm state) lives in a volume mounted here.
USER lampwatch
WORKDIR /var/lib/lampwatch
ENV LAMPWATCH_GATEWAY_STATE_DIR=/var/lib/lampwatch
CMD ["lampwatch-gateway", "run"]

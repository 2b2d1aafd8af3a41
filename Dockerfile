# The translation service (mapper-serve). It applies maps with numpy and needs no GPU;
# on a GPU host it runs beside Triton (see deploy/docker-compose.yml).
#   docker build -t face-mapper .
#   docker run -p 50051:50051 -p 9100:9100 -v maps:/data \
#     -v /srv/admin.token:/run/secrets/admin_token:ro -e MAPPER_ADMIN_TOKEN_FILE=/run/secrets/admin_token \
#     -v /srv/client.tokens:/run/secrets/client_tokens:ro face-mapper
# Safe by default: with no admin token file (or mutual TLS) the service refuses admin calls,
# and only clients listed in /run/secrets/client_tokens ("name token [client|reader]" lines)
# may call it at all; the service refuses to start without that file (templates are
# biometric data, and Translate turns one model's templates into another's).
FROM python:3.11-slim

# DL3064 flags the word TOKEN: this is the path of a mounted secret, not the secret.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MAPPER_HOST=0.0.0.0 \
    MAPPER_PORT=50051 \
    MAPPER_METRICS_PORT=9100 \
    MAPPER_STORE=/data/maps.sqlite \
    MAPPER_CLIENT_TOKENS_FILE=/run/secrets/client_tokens

WORKDIR /app
# torch is an extra for training (mapper-train, MLP maps); the service does not import it.
COPY pyproject.toml README.md ./
COPY mapper ./mapper
COPY mapper_service ./mapper_service
# This project itself, from the build context (its dependencies are pinned in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[postgres]" \
    && useradd --create-home --uid 10001 mapper \
    && mkdir /data && chown mapper /data

USER 10001
VOLUME /data
EXPOSE 50051 9100
# Health stays open to probes without a credential. Healthy means SERVING: a replica still
# loading its maps, or draining, answers NOT_SERVING.
HEALTHCHECK --interval=10s --timeout=3s \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2).status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["mapper-serve"]

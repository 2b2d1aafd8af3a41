# The translation service image, for a GPU host beside a Triton server (NGC image).
# Build: docker build -t face-mapper .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# torch is pinned to a CPU wheel: the service applies maps with numpy; torch only trains MLPs.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY mapper ./mapper
COPY service ./service
RUN pip install .

RUN useradd --create-home --uid 10001 mapper
USER mapper
EXPOSE 50051 9100
ENTRYPOINT ["python", "-m", "mapper.demo"]

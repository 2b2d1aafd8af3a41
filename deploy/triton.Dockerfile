# Triton (GPU) with what the python-backend face models import: this project and the native
# runtimes of dlib and OpenCV. Native-backend models (onnxruntime, OpenVINO) need nothing extra.
# The NGC image must ship Python 3.11 or newer (25.x images do).
#   docker build -f deploy/triton.Dockerfile -t face-mapper-triton .
FROM nvcr.io/nvidia/tritonserver:25.01-py3

COPY pyproject.toml README.md /src/
COPY mapper /src/mapper
COPY mapper_service /src/mapper_service
RUN pip install --no-cache-dir "/src[triton]"

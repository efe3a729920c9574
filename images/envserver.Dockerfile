# The env server itself (compose.yaml builds it). It drives the host's Docker engine through the mounted socket.
# BASE_IMAGE: any Debian/Ubuntu image with python3 >= 3.11; on machines that cannot pull, the offline base image
# (`python -m images base`). PIP_CA_BUNDLE (opt-in): PEM text of a CA that pip must trust during the build (a
# TLS-intercepting proxy); it is removed after the install, but build arguments stay in the image history.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_CA_BUNDLE=
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv git ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY pyproject.toml README.md /app/
COPY envserver /app/envserver
COPY images /app/images
COPY agent /app/agent
COPY trainer /app/trainer
WORKDIR /app
RUN if [ -n "$PIP_CA_BUNDLE" ]; then printf '%s\n' "$PIP_CA_BUNDLE" > /tmp/pip-ca.pem; export PIP_CERT=/tmp/pip-ca.pem; fi \
    && python3 -m venv /venv && /venv/bin/pip install -q ".[envserver]" && rm -f /tmp/pip-ca.pem
ENV PATH=/venv/bin:$PATH
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["python", "-m", "envserver", "serve", "--host", "0.0.0.0", "--port", "8000"]

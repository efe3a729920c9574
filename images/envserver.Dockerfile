# The env server itself (compose.yaml builds it). It drives the host's Docker engine through the mounted socket.
# BASE_IMAGE: any Debian/Ubuntu image with python3 >= 3.11; on machines that cannot pull, the offline base image
# (`python -m images base`). Opt-in CA bundle: a file `.pip-ca.pem` at the repository root (gitignored) is what pip
# trusts during the build (behind a TLS-intercepting proxy); it is deleted after the install, but stays in the
# build layer's history.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
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
# The glob makes the CA file optional (pyproject.toml always matches).
COPY pyproject.toml .pip-ca.pe[m] /tmp/pip-ca/
WORKDIR /app
RUN if [ -f /tmp/pip-ca/.pip-ca.pem ]; then export PIP_CERT=/tmp/pip-ca/.pip-ca.pem; fi \
    && python3 -m venv /venv && /venv/bin/pip install -q ".[envserver]" && rm -rf /tmp/pip-ca
ENV PATH=/venv/bin:$PATH
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["python", "-m", "envserver", "serve", "--host", "0.0.0.0", "--port", "8000"]

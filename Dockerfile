# The egresswatch image: one image for every role (`controller`, `agent`, `run`, `db upgrade`).
#
#   docker build -t egresswatch:0.1.0 .
#   docker run --rm egresswatch:0.1.0 --help
#
# Two stages. The builder builds the wheel and installs it, with exactly the locked run
# requirements (requirements/run.txt, binary wheels only), into a virtualenv at /opt/egresswatch.
# The final stage is the same slim Python image with that virtualenv copied in and nothing
# else: no compilers, no pip, no sources. tests/test_dockerfile.py lints this file (hadolint)
# and checks these rules. docs/deploy.md says how it is run.

# An exact tag, so a rebuild gets the same Python; pin the digest too when you publish
# (`python:3.11.14-slim-bookworm@sha256:...`). Both stages must use the same image: the
# virtualenv's python is a link to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# The lock first: its layer is reused while only egresswatch's own code changes. --no-deps:
# the lock is the whole set, pip resolves nothing; --only-binary: nothing is compiled here.
# The virtualenv gets no pip of its own: the builder's pip installs into it.
COPY requirements/run.txt requirements/run.txt
RUN python -m venv --without-pip /opt/egresswatch \
    && python -m pip --python /opt/egresswatch/bin/python install --no-cache-dir \
        --no-deps --only-binary=:all: -r requirements/run.txt
COPY pyproject.toml README.md ./
COPY service/ service/
COPY migrations/ migrations/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m pip --python /opt/egresswatch/bin/python install --no-cache-dir \
        --no-deps /wheels/egresswatch-*.whl \
    && python -m pip --python /opt/egresswatch/bin/python check

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="egresswatch" \
      org.opencontainers.image.description="Continuous egress connectivity checklist for Kubernetes: which step broke, when, from where." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Bytecode was compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/egresswatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
# /var/lib/egresswatch is the working directory: a relative SQLite URL and an agent's spill
# file land there (mount a volume on it; the chart does).
RUN groupadd --system --gid 10001 egresswatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/egresswatch --shell /usr/sbin/nologin egresswatch \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/egresswatch
COPY --from=builder /opt/egresswatch /opt/egresswatch
WORKDIR /var/lib/egresswatch
USER 10001:10001
# The API and /metrics, when the config says `listen: 0.0.0.0:9108` (the default is loopback).
EXPOSE 9108
# No HEALTHCHECK: Kubernetes ignores it and probes /healthz and /readyz itself (the chart).
ENTRYPOINT ["egresswatch"]
CMD ["controller", "--config", "/etc/egresswatch/config.yaml"]

# One image for every faashub component. The component is chosen by the
# container arguments, for example `gateway`, `queue-worker`,
# `provider kubernetes` or `connector kafka`; the Helm chart in
# deploy/faashub passes them.
#
#   docker build -t faashub:0.1.0 .
#   docker run --rm faashub:0.1.0 --help

# Build stage: turn the source tree into a wheel, and build the wheels of
# every dependency, so the runtime stage needs no compiler.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY faashub ./faashub
COPY gateway ./gateway
COPY queue_worker ./queue_worker
COPY provider ./provider
COPY connectors ./connectors
RUN pip wheel --wheel-dir /wheels .

# Runtime stage: the wheels installed into a virtual environment, run as an
# unprivileged user. The chart mounts a read-only root file system with a
# writable /tmp, so Python must not try to write bytecode next to the code.
FROM python:3.11-slim AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/faashub/bin:$PATH
RUN groupadd --system --gid 10001 faashub \
    && useradd --system --uid 10001 --gid faashub --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin faashub
COPY --from=build /wheels /wheels
RUN python -m venv /opt/faashub \
    && /opt/faashub/bin/pip install --no-index --find-links /wheels faashub \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081 8083 8084
ENTRYPOINT ["faashub"]
CMD ["--help"]

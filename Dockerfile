# consul-elect as a container's entrypoint: PID 1 campaigns on CONSUL_ELECT_KEY and runs the
# command (by default the demo API in examples/) only while this replica leads; it forwards
# signals, reaps orphans and exits with the command's status.
#
# Installed from a wheelhouse built on the host, so the build itself needs no network:
#   pip wheel -q -w build/wheels .
#   docker build -t consul-elect-demo .
# BASE_IMAGE is any image with python3 >= 3.10 and its venv module (the host's Python version,
# should a dependency ship binary wheels); `make test-docker` passes one built offline.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

COPY build/wheels/ /tmp/wheels/
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin consul-elect \
    && python3 -m venv /opt/consul-elect \
    && PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/consul-elect/bin/pip install -q --no-index \
        --find-links /tmp/wheels consul-elect \
    && rm -rf /tmp/wheels
COPY examples/ /app/

# Configured by environment: CONSUL_ELECT_KEY (required), CONSUL_ELECT_TTL, _LOCK_DELAY, _GRACE,
# ... and Consul's own CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ... (`consul-elect run --help`).
# The status server listens on 8080; the demo API on 8000.
ENV PATH=/opt/consul-elect/bin:$PATH \
    CONSUL_ELECT_PORT=8080
USER consul-elect
WORKDIR /app
EXPOSE 8080 8000
# /health answers 503 when the election loop stalls. No curl in slim images: Python does the GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CONSUL_ELECT_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["consul-elect", "run"]
CMD ["--", "python3", "/app/demo_api.py"]

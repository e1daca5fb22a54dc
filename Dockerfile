# consul-elect as a container entrypoint: it runs as PID 1, forwards signals, reaps orphans and
# exits with the command's own status.
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY consul_elect ./consul_elect
RUN pip install --no-cache-dir . && rm -rf /app
ENTRYPOINT ["consul-elect", "run"]
# Give consul-elect a default for the command; compose or `docker run` replaces it.
CMD ["--key", "demo/leader", "--port", "8080", "--", "sh", "-c", "while :; do echo \"$CONSUL_ELECT_NAME leads (token $CONSUL_ELECT_FENCING_TOKEN)\"; sleep 2; done"]

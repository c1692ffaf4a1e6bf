# One sedma node. Build context: the repository root.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY node ./node
COPY protocol ./protocol
COPY nat ./nat
COPY compute ./compute
RUN pip install --no-cache-dir . && useradd --create-home sedma
USER sedma
VOLUME ["/data"]
EXPOSE 7946
ENTRYPOINT ["sedma"]
CMD ["daemon", "--listen", "0.0.0.0:7946", "--data-dir", "/data"]

# One sedma node. Build context: the repository root.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY node ./node
COPY protocol ./protocol
COPY nat ./nat
COPY compute ./compute
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 sedma \
    && mkdir /data && chown sedma /data
USER sedma
VOLUME ["/data"]
# Client commands (`docker compose exec NODE sedma peers`) find the daemon's socket here.
ENV SEDMA_SOCKET=/data/sedma.sock
EXPOSE 7946
ENTRYPOINT ["sedma"]
CMD ["daemon", "--listen", "0.0.0.0:7946", "--data-dir", "/data"]

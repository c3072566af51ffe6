FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY tasks tasks
COPY receiver receiver
COPY emulator emulator
COPY recall_transcribe recall_transcribe
RUN pip install --no-cache-dir . && useradd --create-home app \
    && mkdir -p /data/transcripts && chown -R app /data
USER app
ENTRYPOINT ["recall-transcribe"]

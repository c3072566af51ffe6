# Build stage: the wheel, from the project's files (packages and Lua found by pyproject's rules).
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Runtime stage: the wheel installed, no source tree, run as a user without privileges.
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home app \
    && mkdir -p /data/transcripts && chown -R app /data
USER app
WORKDIR /home/app
# Whichever service the container runs (PID 1's subcommand): the receiver's /readyz, Flower's
# /healthcheck, the emulator's controls, a worker's broker.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["recall-transcribe", "health"]
ENTRYPOINT ["recall-transcribe"]

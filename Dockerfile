# broker-agent: the agent (and the station) as a container image.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home /app agent
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker_agent ./broker_agent
COPY firmware_contracts ./firmware_contracts
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER agent
ENV BROKER_AGENT_CONFIG_DIR=/config \
    BROKER_AGENT_SECRETS_DIR=/secrets \
    BROKER_AGENT_LOG_FORMAT=json
ENTRYPOINT ["broker-agent"]
CMD ["run"]

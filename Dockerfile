# broker-agent: the agent (and the station) as a container image.
FROM python:3.11-slim

# uid 1883 is the official Mosquitto image's user: files the agent writes for the broker
# (password and ACL files) are then readable by it, and the agent may signal it.
RUN useradd --system --uid 1883 --home /app agent \
    && mkdir -p /broker-auth && chown 1883:1883 /broker-auth
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

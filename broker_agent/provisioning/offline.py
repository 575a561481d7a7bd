"""The image an agent would answer with, built locally from the secrets directory (no broker).

``broker-agent provision --offline`` and ``broker-agent flash --offline`` use it; it follows the
agent's rules, credential issuing included when ``issue_credentials`` is on. An ``encrypted``
image uses the device's key from ``<secrets_dir>/_nvs_keys/`` (``NvsKeyStore``: generated and
stored on first use, exactly as the agent does, so the agent's later images for that board
use the same key) and carries its ``nvs_keys`` partition image.
"""

from __future__ import annotations

from broker_agent.errors import ProvisionFailure
from broker_agent.provisioning.credentials import CredentialStore
from broker_agent.provisioning.messages import ProvisionedImage, build_image
from broker_agent.provisioning.nvs_keys import NvsKeyStore
from broker_agent.settings import AgentSettings
from firmware_contracts.codes import ProvisionErrorCode
from firmware_contracts.nvs import partition_size_error


def build_offline_image(
    settings: AgentSettings, device_id: str, partition_size: int, *, encrypted: bool = False
) -> ProvisionedImage:
    """Raises ``ProvisionFailure`` with the code the agent would answer."""
    problem = partition_size_error(partition_size)
    if problem is not None:
        raise ProvisionFailure(ProvisionErrorCode.INVALID_PARTITION_SIZE, problem)
    store = CredentialStore(
        settings.secrets_dir, settings.config_dir, issue=settings.issue_credentials
    )
    values = store.values_for(device_id)  # an unknown device gets no key
    key = NvsKeyStore(settings.secrets_dir).key_for(device_id) if encrypted else None
    return build_image(device_id, values, partition_size, encryption_key=key)

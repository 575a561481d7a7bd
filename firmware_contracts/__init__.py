"""The wire contract between the agent, the flash stations and the ESP32 firmware.

Pure code (no asyncio, no I/O): topics, identifiers, payload models, error codes, the NVS
layout and the partition-table format. ``python -m firmware_contracts generate|check`` writes or
verifies the C header and JSON Schemas generated from these definitions.
"""

from firmware_contracts.codes import CONTRACT_VERSION

__all__ = ["CONTRACT_VERSION"]

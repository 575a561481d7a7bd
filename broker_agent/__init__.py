"""broker-agent: run an ESP32 fleet and its flashing bench from MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("broker-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]

"""The README documents every setting, and the CLI reads each one from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker_agent.cli import build_parser, settings_from
from broker_agent.settings import AgentSettings, ConsoleSettings, StationSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def env_names() -> set[str]:
    fields = set(AgentSettings.model_fields) | set(StationSettings.model_fields)
    fields |= set(ConsoleSettings.model_fields)
    return {f"BROKER_AGENT_{name.upper()}" for name in fields}


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    documented = set(re.findall(r"BROKER_AGENT_[A-Z0-9_]+", text))
    # "RECONNECT_MIN_S / _MAX_S" is written as one row
    documented |= {name.replace("_MIN_S", "_MAX_S") for name in documented}
    documented |= {name.replace("_USERNAME", "_PASSWORD_FILE") for name in documented}
    assert set() == env_names() - documented


def test_readme_names_no_setting_that_does_not_exist() -> None:
    text = README.read_text(encoding="utf-8")
    documented = set(re.findall(r"BROKER_AGENT_[A-Z0-9_]+[A-Z0-9]", text))
    assert set() == documented - env_names()


def test_environment_feeds_the_cli_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_AGENT_TOPIC_ROOT", "fleet/eu")
    monkeypatch.setenv("BROKER_AGENT_AGENT_ID", "from-env")
    args = build_parser().parse_args(["run", "--agent-id", "from-flag"])
    settings = settings_from(args, AgentSettings)
    assert ("fleet/eu", "from-flag") == (settings.topic_root, settings.agent_id)

from __future__ import annotations

import pytest

from qmo import __version__
from qmo.cli import main
from qmo.commands.run import DEFAULT_PEERING_LIFETIME, add_arguments, peering_priority


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_older_replicas_outrank_newer_ones_unless_told_otherwise() -> None:
    first, second = peering_priority(None, 1_000_000_000), peering_priority(None, 1_000_001_000)
    assert first > second  # kopf: the higher priority acts, the rest stand by
    assert peering_priority(7, 1_000_000_000) == 7


def test_run_defaults_to_a_short_peering_lifetime() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--peering", "qmo"])
    assert args.peering_lifetime == DEFAULT_PEERING_LIFETIME == 15
    assert args.peering_priority is None

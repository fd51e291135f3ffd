"""Shared pytest configuration: markers and the repository root."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long end-to-end checks (still part of `make test`)')
    config.addinivalue_line('markers', 'slurm: end-to-end checks on a single-node Slurm cluster the tests start '
                                       '(tests/slurm/cluster.py; still part of `make test`, skipped where Slurm cannot run)')


@pytest.fixture
def repo_root() -> Path:
    "The repository root (where settings.ini lives)."
    return ROOT

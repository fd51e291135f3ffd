"""Shared pytest configuration: markers and the repository root."""
import os
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


SMOKE_STUDIES = ('ickd_margin', 'ickd_balance', 'clel_framework', 'clel_norm_direction')


@pytest.fixture(scope='session')
def smoke_runs(tmp_path_factory) -> Path:
    """Real smoke runs of the four shipped plans (one seed), made once per test session and shared read-only.

    $CONTRASTIVE_ABLATIONS_TEST_RUNS names a runs folder to use instead (e.g. `runs/smoke` from `make smoke`).
    Under pytest-xdist the workers share one folder: the first makes it under a lock, the others wait and reuse it
    (the sweep skips runs already finished). A test that changes runs copies them first."""
    from contrastive_ablations.foundation.core import file_lock
    from contrastive_ablations.engine.rundata import find_studies
    from contrastive_ablations.engine.sweep import sweep
    env = os.environ.get('CONTRASTIVE_ABLATIONS_TEST_RUNS')
    if env:
        assert find_studies(env), f'$CONTRASTIVE_ABLATIONS_TEST_RUNS={env} holds no study'
        return Path(env)
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): shared = shared.parent   # the folder all workers of this session share
    out = shared / 'smoke_runs'
    with file_lock(shared / 'smoke_runs.lock'), open(os.devnull, 'w') as quiet:
        res = sweep([ROOT / 'plans' / f'{s}.yaml' for s in SMOKE_STUDIES], out=out, profile='smoke', seeds=1, workers=2,
                    stream=quiet)
    assert res.ok, f'the smoke sweep failed: {res}'
    return out

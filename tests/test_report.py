"""Report aggregation: statistics against scipy, failed runs kept, the CLI, and the layout the sweep writes.

Runs here are SYNTHETIC (the demo fixture `make_demo_runs`), written into temporary folders only.
"""
import io
import json
import shutil
import contextlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from contrastive_ablations.report import (
    cli_report, compare_samples, compare_with_control, failed_runs, load_study, make_demo_runs, seed_stats,
    study_finding, summarize, summary_table, resolve_runs_dir)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp('runs')
    make_demo_runs(d, studies=('ickd_margin', 'clel_framework'), seeds=3)  # SYNTHETIC
    return d


def test_seed_stats_matches_t_interval():
    x = [71.2, 73.9, 72.5, 70.8]
    s = seed_stats(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert s['n'] == 4 and np.isclose(s['lo'], lo) and np.isclose(s['hi'], hi)
    with pytest.raises(ValueError, match="'level'"): seed_stats(x, level=1.5)


def test_paired_and_welch():
    a, b = [1.0, 2.0, 3.5, 4.0], [0.5, 1.8, 3.0, 3.1]
    r = compare_samples(a, b, [0, 1, 2, 3], [0, 1, 2, 3])
    assert r['test'].startswith('paired') and np.isclose(r['p'], stats.ttest_rel(a, b).pvalue)
    d = np.subtract(a, b)
    assert np.allclose([r['lo'], r['hi']], stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d)))
    r = compare_samples(a, b, [0, 1, 2, 3], [4, 5, 6, 7])   # different seeds: no pairing
    assert r['test'].startswith('Welch') and np.isclose(r['p'], stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_failed_and_diverged_are_kept(demo):
    st = load_study(demo / 'ickd_margin')
    bad = failed_runs(st)
    assert sorted(bad.status) == ['diverged', 'failed'] and 'synthetic failure' in ' '.join(bad.error)
    s = summarize(st)
    assert s['failed'].sum() == 1 and s['diverged'].sum() == 1 and s['runs'].sum() == len(st.runs)
    assert '2 of' in study_finding(st)


def test_run_without_metrics_or_folder(demo, tmp_path):
    "A run that is listed in the manifest but never started counts as incomplete."
    d = tmp_path / 'ickd_margin'
    shutil.copytree(demo / 'ickd_margin', d)
    m = json.loads((d / 'manifest.json').read_text())
    m['runs'].append(dict(run_id='delta=0.2_seed=9-x', dir='delta=0.2_seed=9-x', role='ablation', label='delta=0.2',
                          seed=9, state='pending', params={'delta': 0.2, 'seed': 9}))
    (d / 'manifest.json').write_text(json.dumps(m))
    st = load_study(d)
    row = st.runs[st.runs.run_id == 'delta=0.2_seed=9-x'].iloc[0]
    assert row.status == 'incomplete' and row.variant == '0.2'


def test_comparison_uses_welch_when_a_control_seed_is_missing(demo, tmp_path):
    d = tmp_path / 'clel_framework'
    shutil.copytree(demo / 'clel_framework', d)
    ctrl = sorted(p for p in d.iterdir() if p.name.startswith('framework=simclr'))[0]
    (ctrl / 'metrics.json').unlink()
    (ctrl / 'error.txt').write_text('RuntimeError: killed\n')
    c = compare_with_control(load_study(d), ['fid'])
    assert c.test.str.startswith('Welch').all(), c.test.tolist()


def test_summary_table_and_cli(demo):
    t = summary_table(load_study(demo / 'clel_framework'))
    assert t.iloc[0, 0] == 'simclr (control)' and '±' in t['FID'].iloc[0]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert cli_report([str(demo)]) == 0
    out = buf.getvalue()
    assert 'ickd_margin' in out and 'clel_framework' in out and 'SYNTHETIC' in out and 'paired t' in out
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_report([str(demo / 'nothing_here')]) == 1
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        cli_report([str(demo), '--study', 'no_such_study'])


def test_resolve_runs_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_RUNS', str(tmp_path))
    assert resolve_runs_dir() == tmp_path and resolve_runs_dir('x') == Path('x')

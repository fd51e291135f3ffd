"""The report: run folders read as data, statistics that respect each metric's range and small samples, the
wording of findings, the CSV, escaping, the terminal width and the CLI.

Runs here are SYNTHETIC (tests/fixtures.py), written into temporary folders only.
"""
import contextlib
import html
import io
import json
import shutil
from pathlib import Path
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from contrastive_ablations.engine.report import (
    cli_report, comparison_tables, format_report, report_study, resolve_runs_dir, seeds_sentence, study_finding,
    summary_csv, summary_tables, headline_metrics)
from contrastive_ablations.engine.rundata import load_study
from contrastive_ablations.engine.seedstats import compare_samples, compare_with_control, seed_stats, summarize
from fixtures import ROOT, write_study


def page_text(study, **kw) -> str:
    "Every HTML/Markdown output of the study's results page, joined."
    shown = []
    report_study(study, display_fn=shown.append, **kw)
    return '\n'.join(x.data for x in shown if isinstance(getattr(x, 'data', None), str))


def test_seed_stats_t_interval_cut_to_the_range():
    x = [71.2, 73.9, 72.5, 70.8]
    s = seed_stats(x, 0, 100)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert s['n'] == 4 and np.isclose(s['ci_low'], lo) and np.isclose(s['ci_high'], hi)
    s = seed_stats([10.15, 19.35], 0, 100)            # the plain t interval is 14.75 ± 58.4
    assert s['ci_low'] == 0 and 0 < s['ci_high'] <= 100
    s = seed_stats([0.99, 0.90], 0, 1)
    assert s['ci_high'] == 1 and s['ci_low'] >= 0
    with pytest.raises(ValueError, match="'level'"): seed_stats(x, level=1.5)


def test_paired_and_welch_match_scipy():
    a, b = [1.0, 2.0, 3.5, 4.0], [0.5, 1.8, 3.0, 3.1]
    r = compare_samples(a, b, [0, 1, 2, 3], [0, 1, 2, 3])
    assert r['test'] == 'paired t, n = 4' and np.isclose(r['p'], stats.ttest_rel(a, b).pvalue)
    d = np.subtract(a, b)
    assert np.allclose([r['ci_low'], r['ci_high']], stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d)))
    assert r['detectable'] > 0
    r = compare_samples(a, b, [0, 1, 2, 3], [4, 5, 6, 7])   # different seeds: no pairing
    assert r['test'].startswith('Welch') and np.isclose(r['p'], stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_zero_variance_and_one_seed_say_so():
    z = compare_samples([80.0, 81.0], [79.0, 80.0], [0, 1], [0, 1])   # both differences +1.00
    assert np.isnan(z['p']) and np.isnan(z['ci_low']) and 'zero variance' in z['note'] and z['diff'] == 1
    one = compare_samples([80.0], [79.0], [0], [0])
    assert one['test'] == 'none' and np.isnan(one['p']) and 'at least 2' in one['note']


def _const(plan, role, value, seed, rng):
    "Every value's metrics differ from the control's by exactly the same amount on every seed."
    base = 80.0 + seed + (0 if role == 'control' else 1.0)
    return {'status': 'ok', 'teacher_top1': base, 'student_top1': base - 2, 'teacher_loss_volatility': 0.05,
            'student_loss_volatility': 0.05, 'teacher_epochs_to_95pct': 3.0, 'student_epochs_to_95pct': 3.0}


def test_wording_with_zero_variance(tmp_path):
    st = load_study(write_study(tmp_path, seeds=2, metrics_fn=_const, broken=False))
    f = study_finding(st)
    assert 'zero variance, no test possible' in f and 'p = 0' not in f and 'p = 1' not in f
    t = pd.concat([t for _, t in comparison_tables(st)])
    assert t.p.eq('—').all() and t['95% CI of the difference'].eq('—').all()
    assert not re.search(r'p\s*=\s*[01](\.0+)?\b', page_text(st))


def test_wording_with_one_seed(tmp_path):
    st = load_study(write_study(tmp_path, seeds=1, broken=False))
    assert 'a test needs at least 2' in study_finding(st)
    top = dict(summary_tables(st))['top1']
    assert not top.iloc[:, 2].str.contains(r'\[').any()          # no interval from one seed


def test_not_significant_states_the_detectable_difference(tmp_path):
    st = load_study(write_study(tmp_path, seeds=3))
    c = compare_with_control(st, headline_metrics(st)[:1])
    r = c[c.p >= 0.05].iloc[0]
    m = st.metric('teacher_top1')
    assert r.detectable > 0
    text = ' '.join(study_finding(st, m) for m in headline_metrics(st))
    assert 'detectable at 80% power, so a smaller one could not be excluded' in text


def test_nan_metrics_and_diverged_runs_are_counted(tmp_path):
    d = write_study(tmp_path, seeds=3)
    run = sorted(p for p in d.iterdir() if p.name.startswith('delta=0.1-seed=0'))[0]
    m = json.loads((run / 'metrics.json').read_text()); m['teacher_top1'] = None; m['student_top1'] = float('inf')
    (run / 'metrics.json').write_text(json.dumps(m))   # Python writes Infinity: missing, like null
    st = load_study(d)
    s = summarize(st, [st.metric('teacher_top1')]).set_index('variant')
    assert s.loc['0.1', 'n'] == 2 and s.loc['0.5', 'n'] == 3 and (st.runs.status[st.runs.run_id == run.name] == 'ok').all()
    assert summarize(st, [st.metric('student_top1')]).set_index('variant').loc['0.1', 'n'] == 2
    assert sorted(st.runs.status[st.runs.status != 'ok']) == ['diverged', 'failed']
    assert '2 of' in format_report(st) and 'synthetic failure' in format_report(st)


@pytest.mark.parametrize('content, why', [('[]', 'expected a JSON object, found a JSON array'),
                                          ('"done"', 'expected a JSON object, found a JSON string'),
                                          ('{"status": "ok", "teacher_top1": "high"}', "'teacher_top1' = 'high' is not a number"),
                                          ('{"status": "ok", "teacher_', 'not a valid JSON file'),
                                          ('{"status": "ok", "teacher_top1": -5}', "'teacher_top1' = -5 is outside its range [0, 100]"),
                                          ('{"status": "finished"}', "field 'status' = 'finished' is not one of ok, diverged, failed")])
def test_bad_metrics_file_marks_the_run(tmp_path, content, why):
    d = write_study(tmp_path, seeds=2, broken=False)
    run = sorted(p for p in d.iterdir() if p.is_dir())[0]
    (run / 'metrics.json').write_text(content)
    st = load_study(d)
    row = st.runs[st.runs.run_id == run.name].iloc[0]
    assert row.status == 'invalid' and str(run / 'metrics.json') in row.error and why in row.error
    assert 'invalid: 1' in format_report(st) and html.escape(why) in page_text(st)


@pytest.mark.parametrize('cut', [0, 1, 50, -10])
def test_truncated_or_odd_manifest(tmp_path, cut):
    d = write_study(tmp_path, seeds=2)
    text = (d / 'manifest.json').read_text()
    (d / 'manifest.json').write_text(text[:cut] if cut >= 0 else json.dumps({'plan': 'oops', 'runs': {'a': 1}}))
    st = load_study(d)
    assert st.problems and str(d / 'manifest.json') in st.problems[0]
    assert len(st.runs) == len([p for p in d.iterdir() if p.is_dir()]) and 'manifest.json' in format_report(st)
    page_text(st)   # the page renders


def test_csv_long_format_inside_ranges(tmp_path):
    def wild(plan, role, value, seed, rng):   # two seeds far apart, near the bounds: plain t intervals leave the range
        return {'status': 'ok', 'fid': [5.0, 400.0][seed], 'auroc_mean': [0.99, 0.55][seed], **{
            f'auroc_{s}': [0.999, 0.40][seed] for s in ('digits', 'mnist', 'kmnist', 'uniform', 'vflip', 'interp')}}
    st = load_study(write_study(tmp_path, 'clel_framework', seeds=2, metrics_fn=wild, broken=False))
    csv = summary_csv(st)
    assert {'variant', 'metric', 'n', 'mean', 'ci_low', 'ci_high'} <= set(csv.columns)
    assert set(csv.metric) >= {'fid', 'auroc_mean', 'auroc_mnist'}
    has = csv[csv.ci_low.notna()]
    assert len(has) and (has.ci_low >= has.range_lo.fillna(-np.inf)).all() and (has.ci_high <= has.range_hi.fillna(np.inf)).all()
    assert (csv[csv.metric == 'fid'].ci_low == 0).all() and (csv[csv.metric == 'auroc_mean'].ci_high == 1).all()
    assert 'download="clel_framework.csv"' in page_text(st)


def test_markup_is_escaped(tmp_path):
    evil = '<script>alert(1)</script>'
    d = write_study(tmp_path, seeds=2, plan_changes=dict(title=evil, description=evil,
                    baselines=[dict(label=f'no gate {evil}', params={'gate': 'none'})]))
    run = sorted(p for p in d.iterdir() if p.name.endswith('-failed'))[0]
    (run / 'error.txt').write_text(f'RuntimeError: {evil}\n')
    st = load_study(d)
    page = page_text(st, run_url=lambda s, r: f'../runs/{s}/{r}.html?"><script>')
    assert '<script>' not in page and '&lt;script&gt;' in page
    shown = []
    from contrastive_ablations.engine.report import report_overview
    report_overview(tmp_path, display_fn=shown.append)
    assert '<script>' not in shown[-1].data and '&lt;script&gt;' in shown[-1].data
    empty = tmp_path / 'runs' / evil.replace('/', '_')   # a study folder named with markup, no runs yet
    assert '<script>' not in page_text(empty) and '&lt;script&gt;' in page_text(empty)


def test_smoke_banner_no_finding_and_terminal_width(tmp_path):
    st = load_study(write_study(tmp_path, seeds=2, profile='smoke', synthetic=False))
    page = page_text(st)
    assert 'SMOKE PROFILE' in page and 'mean nothing' in page and 'no finding is stated' in page
    text = format_report(st)
    assert text.splitlines()[1].startswith('SMOKE PROFILE') and max(map(len, text.splitlines())) <= 100
    q = load_study(write_study(tmp_path / 'q', 'clel_framework', seeds=3))
    assert max(map(len, format_report(q).splitlines())) <= 100


def test_seeds_from_plan_or_override(tmp_path):
    assert seeds_sentence(load_study(write_study(tmp_path, seeds=3))) == 'Seeds: 3 per value, as the plan asks.'
    st = load_study(write_study(tmp_path / 'o', seeds=2, sweep_seeds=2))
    assert 'set by --seeds 2 (SEEDS=2), overriding' in seeds_sentence(st)


def test_cli(tmp_path):
    write_study(tmp_path, 'ickd_margin', seeds=3); write_study(tmp_path, 'clel_framework', seeds=3)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert cli_report([str(tmp_path), '--csv', str(tmp_path / 'csv')]) == 0
    out = buf.getvalue()
    assert 'ickd_margin' in out and 'clel_framework' in out and 'SYNTHETIC' in out and 'paired t' in out
    assert max(map(len, out.splitlines())) <= 100 and (tmp_path / 'csv' / 'clel_framework.csv').is_file()
    with contextlib.redirect_stdout(io.StringIO()): assert cli_report([str(tmp_path / 'nothing_here')]) == 1
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        cli_report([str(tmp_path), '--study', 'no_such_study'])


def test_resolve_runs_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_RUNS', str(tmp_path))
    assert resolve_runs_dir() == tmp_path and resolve_runs_dir('x') == __import__('pathlib').Path('x')


def test_reading_and_reporting_do_not_import_torch(tmp_path):
    d = write_study(tmp_path, seeds=2)
    code = ('import sys; from contrastive_ablations import report, rundata, seedstats; '
            f'st = rundata.load_study({str(d)!r}); report.format_report(st); report.summary_csv(st); '
            "assert 'torch' not in sys.modules, 'torch was imported'")
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]


# ---- a run is tied to its recipe and code; the report never mixes recipes ----------------------------------

def test_changed_recipe_makes_new_runs_and_the_report_never_mixes_them(tmp_path, monkeypatch):
    "A changed profile value gives new run folders (the old ones stay); the study compares one recipe and names what it left out."
    import os
    from contrastive_ablations.engine import plans as P
    from contrastive_ablations.engine import sweep as S
    from contrastive_ablations.engine import runs as engine_runs
    from contrastive_ablations.engine.report import format_report, provenance_sentence
    from test_sweep import PLANS, TOY
    saved = dict(P.EXPERIMENTS)
    exp = TOY.register()
    try:
        out, plan = tmp_path/'runs', PLANS/'toy_x.yaml'
        quiet = open(os.devnull, 'w')
        first = S.sweep([plan], out=out, profile='smoke', seeds=1, workers=1, stream=quiet)
        assert first.ok and len(first.done) == 4
        info = json.loads((Path(first.runs[0].run_dir)/'run_info.json').read_text())   # what made the run, in its own files
        assert info['package_version'] and {'commit', 'dirty'} <= set(info['git'])
        assert info['libraries']['torch'] and info['libraries']['numpy'] and info['recipe_hash'] == first.runs[0].recipe
        old = {r.run_id for r in first.runs}

        monkeypatch.setitem(exp.profiles, 'smoke', {'steps': 20})   # the smoke recipe changes
        second = S.sweep([plan], out=out, profile='smoke', seeds=1, workers=1, stream=quiet)
        assert second.ok and len(second.done) == 4 and not second.skipped   # nothing of the old recipe counts as done
        new = {r.run_id for r in second.runs}
        assert old.isdisjoint(new) and all((out/'toy_x'/r/'metrics.json').is_file() for r in old | new)   # old runs kept

        st = load_study(out/'toy_x')
        assert set(st.runs.run_id) == new and st.recipe == second.runs[0].recipe
        assert sorted(r['run_id'] for r in st.left_out) == sorted(old) and all('another recipe' in r['why'] for r in st.left_out)
        text = format_report(st)
        assert 'left out' in text and all(r in text for r in old) and '4 runs left out' in provenance_sentence(st)

        # runs written before runs recorded their recipe: "recipe unknown", never mixed with known-recipe runs
        old = set()
        for r in first.runs:   # as the suite wrote them before: no recipe in the folder name's hash or in run_info.json
            f = Path(r.run_dir)/'run_info.json'
            i = json.loads(f.read_text()); i.pop('recipe_hash'); f.write_text(json.dumps(i))
            old.add(engine_runs.make_run_id(r.label, r.seed, r.identity)); os.rename(r.run_dir, out/'toy_x'/engine_runs.make_run_id(r.label, r.seed, r.identity))
        st = load_study(out/'toy_x')
        assert set(st.runs.run_id) == new and sorted(r['run_id'] for r in st.left_out) == sorted(old)
        assert all('recipe unknown' in r['why'] for r in st.left_out), st.left_out
        for r in second.runs: shutil.rmtree(r.run_dir)
        (out/'toy_x'/'manifest.json').unlink()
        st = load_study(out/'toy_x')   # only old runs: all kept, and the page says their recipe is unknown
        assert set(st.runs.run_id) == old and st.recipe is None and 'recipe unknown' in provenance_sentence(st)
        assert 'Code version: package ' in provenance_sentence(st)
    finally:
        P.EXPERIMENTS.clear(); P.EXPERIMENTS.update(saved)

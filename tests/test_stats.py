"""Evidence on the results pages: the family of comparisons and its Holm-adjusted p-values, every seed in the
figures and the CSV, the seeds a difference needs, the verdicts and forest plot that open each page, and the
common random numbers that make paired runs share their initial weights and batches.

Study runs here are SYNTHETIC (tests/fixtures.py), written into temporary folders only.
"""
import contextlib
import io
import json
import math

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.collections import PathCollection
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from contrastive_ablations.engine.figures import plot_differences, plot_metric_rows, plot_metrics, study_figures
from contrastive_ablations.engine.report import (cli_report, comparison_tables, family_table, format_report, headline_metrics,
                                          metric_verdict, report_study, seeds_csv, seeds_sentences, study_finding,
                                          summary_csv, verdicts)
from contrastive_ablations.engine.rundata import load_study
from contrastive_ablations.engine.seedstats import paired_differences, pooled_paired_sd, seeds_needed, seeds_plan
from fixtures import write_study


def page(study, **kw):
    shown = []
    report_study(study, display_fn=shown.append, **kw)
    return shown


def text_of(shown) -> str:
    return '\n'.join(x.data for x in shown if isinstance(getattr(x, 'data', None), str))


def test_holm_adjusted_p_equals_statsmodels_on_study_tables(tmp_path):
    st = load_study(write_study(tmp_path, seeds=3))
    fam = family_table(st)
    prim = {m.name for m in headline_metrics(st)}
    assert set(fam.metric) == prim and fam.family_size.eq(np.isfinite(fam.p).sum()).all() and len(fam) > 10
    ok = np.isfinite(fam.p)
    assert np.allclose(fam.p_holm[ok], multipletests(fam.p[ok], alpha=0.05, method='holm')[1])
    assert (fam.p_holm[ok] >= fam.p[ok]).all()
    csv = summary_csv(st).dropna(subset=['p_holm'])     # the CSV carries the same adjusted p beside the raw one
    m = csv.merge(fam, on=['variant', 'metric'], suffixes=('', '_fam'))
    assert len(m) == ok.sum() and np.allclose(m.p_holm, m.p_holm_fam) and np.allclose(m.p, m.p_fam)
    t = pd.concat([t for _, t in comparison_tables(st)])   # the tables show both
    assert {'p', 'p (Holm)'} <= set(t.columns)
    text = format_report(st)
    assert 'p Holm' in text and max(map(len, text.splitlines())) <= 100
    # the CLI report and its CSV
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert cli_report([str(tmp_path), '--csv', str(tmp_path / 'csv')]) == 0
    assert 'p Holm' in buf.getvalue()
    assert 'p_holm' in pd.read_csv(tmp_path / 'csv' / 'ickd_margin.csv').columns


def _one_small_p(plan, role, value, seed, rng):
    "δ = 0.1 is about 1 point below the control on every seed (raw paired p ≈ 0.02); the others differ by noise."
    x = 80.0 + 2 * seed
    if role == 'ablation' and value == 0.1: x += [-1.0, -1.3, -0.8][seed]
    elif role != 'control': x += rng.normal(0, 0.5)
    return {'status': 'ok', 'teacher_top1': x, 'student_top1': x - 2 + (0.0 if role == 'control' else rng.normal(0, 0.4)),
            'teacher_loss_volatility': 0.05 + 0.001 * rng.normal(), 'student_loss_volatility': 0.04 + 0.001 * rng.normal(),
            'teacher_epochs_to_95pct': 3 + rng.normal(0, 0.2), 'student_epochs_to_95pct': 3 + rng.normal(0, 0.2)}


def test_findings_and_verdicts_read_the_adjusted_p(tmp_path):
    st = load_study(write_study(tmp_path, seeds=3, metrics_fn=_one_small_p, broken=False))
    fam = family_table(st)
    r = fam[(fam.metric == 'teacher_top1') & (fam.variant == '0.1')].iloc[0]
    assert r.p < 0.05 <= r.p_holm, (r.p, r.p_holm)                  # raw "significant", not after correction
    m = st.metric('teacher_top1')
    f = study_finding(st, m)
    assert 'Holm-adjusted p' in f and 'not significant after correction' in f and 'significant at α' not in f
    v = metric_verdict(st, m)
    assert v.startswith('teacher top-1 accuracy: no value differs from the control') and 'Holm' in v
    tested = fam[(fam.metric == 'teacher_top1') & np.isfinite(fam.p)]
    bound = np.abs(tested[['ci_low', 'ci_high']].to_numpy()).max()   # the equivalence bound of the intervals
    assert f'±{bound:.2f} pp' in v or f'±{bound:.3f} pp' in v or f'±{bound:.1f} pp' in v, (v, bound)
    assert len(verdicts(st)) == len(headline_metrics(st))


def test_a_difference_that_survives_the_correction_is_named(tmp_path):
    def big(plan, role, value, seed, rng):
        d = -5.0 if value == 0.5 and role == 'ablation' else 0.0
        x = 80.0 + 3 * seed + d + (rng.normal(0, 0.05) if role != 'control' else 0.0)
        return {'status': 'ok', 'teacher_top1': x, 'student_top1': x - 2, 'teacher_loss_volatility': 0.05,
                'student_loss_volatility': 0.04, 'teacher_epochs_to_95pct': 3.0, 'student_epochs_to_95pct': 3.0}
    st = load_study(write_study(tmp_path, seeds=4, metrics_fn=big, broken=False))
    v = metric_verdict(st, st.metric('teacher_top1'))
    assert 'delta = 0.5 (-5.' in v and 'worse, adjusted p = ' in v and 'differs from the control' in v, v
    fam = family_table(st)
    assert (fam[fam.metric == 'teacher_top1'].set_index('variant').loc['0.5', 'p_holm'] < 0.05)


def test_every_seed_in_the_csv_and_the_figures(tmp_path):
    st = load_study(write_study(tmp_path, seeds=3))
    s = seeds_csv(st)
    in_runs = [m for m in st.metrics if m.name in st.runs]
    assert len(s) == len(st.runs) * len(in_runs) and {'run_id', 'seed', 'value', 'control_value', 'diff'} <= set(s.columns)
    ok = s[(s.status == 'ok') & (s.role != 'control') & (s.metric == 'teacher_top1')]
    d = paired_differences(st, st.metric('teacher_top1'))
    assert len(ok) == len(d) == ok['diff'].notna().sum()
    assert np.allclose(ok['value'] - ok['control_value'], ok['diff'])
    assert s[s.status != 'ok']['diff'].isna().all()
    n_ok = (st.runs.status == 'ok').sum()
    # every metric figure draws one point per finished run (plot_metrics) and the forest plot one per paired seed
    fig = plot_metrics(st, [st.metric('teacher_top1')])
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection)) == n_ok
    fig = plot_differences(st, [st.metric('teacher_top1')])
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection)) == len(d)
    c = load_study(write_study(tmp_path / 'c', 'clel_framework', seeds=3))
    ms = [m for m in c.metrics if m.family == 'auroc' and m.name in c.runs]
    fig = plot_metric_rows(c, ms)
    assert sum(len(x.get_offsets()) for x in fig.axes[0].collections if isinstance(x, PathCollection)) == sum(c.ok()[m.name].notna().sum() for m in ms)
    plt.close('all')


def test_seeds_needed_is_statsmodels_power_and_costs_the_run_time(tmp_path):
    d = write_study(tmp_path, seeds=3, broken=False)
    for i, run in enumerate(sorted(p for p in d.iterdir() if p.is_dir())):
        (run / 'run_info.json').write_text(json.dumps({'status': 'done', 'notebook_wall_s': 100.0 + 10 * (i % 3)}))
    st = load_study(d)
    m = st.metric('teacher_top1')
    sd, df = pooled_paired_sd(st, m)
    dd = paired_differences(st, m)
    g = dd.groupby('variant')['diff']
    assert df == int((g.count() - 1).sum()) and np.isclose(sd**2, ((g.count() - 1) * g.var()).sum() / df)
    plan = seeds_plan(st, headline_metrics(st), {'teacher_top1': 0.8}).set_index('metric')
    r = plan.loc['teacher_top1']
    want = TTestPower().solve_power(effect_size=0.8 / sd, alpha=0.05, power=0.8, alternative='two-sided')
    assert r.seeds_needed == max(2, math.ceil(want)) and r.diff_source == 'given'
    want_f = TTestPower().solve_power(effect_size=0.8 / sd, alpha=0.05 / r.family_size, power=0.8, alternative='two-sided')
    assert r.seeds_needed_family == max(2, math.ceil(want_f))
    assert r.run_s == 110.0 and r.run_points == st.runs.variant.nunique() and r.seeds_now == 3
    assert np.isclose(r.hours_needed_family, r.seeds_needed_family * r.run_points * 110 / 3600)
    assert np.isclose(r.hours_extra_family, max(0, r.seeds_needed_family - 3) * r.run_points * 110 / 3600)
    s = seeds_sentences(st, {'teacher_top1': 0.8})[0]
    assert f"needs {int(r.seeds_needed_family)} seeds within the family" in s and 'median run time of 110 s' in s
    assert plan.loc['student_top1', 'diff_source'] == 'largest observed difference'
    assert seeds_needed(1.0, 0.5) == 34 and seeds_needed(1.0, 25.0) == 2 and np.isnan(seeds_needed(np.nan, 1.0))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): assert cli_report([str(tmp_path), '--detect', 'teacher_top1=0.8']) == 0
    assert 'a difference of 0.80 pp (given)' in ' '.join(buf.getvalue().split())
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        cli_report([str(tmp_path), '--detect', 'no_such_metric=1'])
    assert 'no_such_metric is not a metric' in err.getvalue()


def test_page_opens_with_verdicts_and_the_forest_plot(tmp_path):
    st = load_study(write_study(tmp_path, seeds=3))
    shown = page(st)
    kinds = ['fig' if isinstance(x, plt.Figure) else getattr(x, 'data', '') for x in shown]
    i_glance = next(i for i, k in enumerate(kinds) if k == '## The answer at a glance')
    i_fig = kinds.index('fig')
    i_data = next(i for i, k in enumerate(kinds) if k == '## What the data show')
    assert i_glance < i_fig < i_data
    assert 'difference from the control' in shown[i_fig]._suptitle.get_text()
    text = text_of(shown)
    assert text.count('<li>', text.index('class="verdicts"'), text.index('Family of comparisons')) == len(headline_metrics(st))
    assert 'A seed sets the training subset' in text and 'seeds within the family' in text
    assert 'download="ickd_margin_seeds.csv"' in text
    plt.close('all')


def test_paired_runs_share_initial_weights_and_batches(monkeypatch):
    "Common random numbers: for the same seed, two values of δ (and of λ) start from the same weights and see the same batches."
    import torch
    from contrastive_ablations.methods.ickd import distill as ickd
    from contrastive_ablations.methods.ickd.spec import ICKD

    class Stop(Exception): pass
    seen = {}

    def capture(knob, value, student=False, seed=7):
        p = ICKD.validate({'profile': 'smoke', knob: value, 'seed': seed, 'device': 'cpu'})
        cfg = ickd.resolve_config(p)
        train, val, _, _ = ickd.load_splits(cfg, p, 'cpu')
        made, augs = [], []
        real_create, real_aug = ickd.create_model, ickd.standard_augment
        def create(*a, **kw): made.append(real_create(*a, **kw)); return made[-1]
        def aug(x, **kw): augs.append(real_aug(x, **kw)); return augs[-1]
        def fake_fit(step_fn, loader, *a, **kw):
            it = iter(loader)
            batches = [next(it) for _ in range(3)]
            state = {k: v.detach().clone() for k, v in made[-1].state_dict().items()}
            step_fn(*batches[0], 0)     # one step's augmentation (the random crops and flips of the first batch)
            seen[(knob, value, student, seed)] = (state, batches, augs[0].clone())
            raise Stop
        monkeypatch.setattr(ickd, 'create_model', create)
        monkeypatch.setattr(ickd, 'standard_augment', aug)
        monkeypatch.setattr(ickd, 'fit', fake_fit)
        with pytest.raises(Stop):
            if student:
                teacher = real_create(cfg.teacher_arch, n_classes=len(train.classes), in_channels=train.x.shape[1])
                ickd.train_student(teacher, train, val, cfg, p, 'cpu', progress=False)
            else: ickd.train_teacher(train, val, cfg, p, 'cpu', progress=False)
        monkeypatch.undo()
        return seen[(knob, value, student, seed)]

    def same(a, b):
        (sa, ba, xa), (sb, bb, xb) = a, b
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), 'initial weights differ'
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ba, bb)), 'batches differ'
        return torch.equal(xa, xb)

    assert same(capture('delta', 0.1), capture('delta', 0.5))            # δ: weights, batches and augmentation
    assert same(capture('lam', 0.01), capture('lam', 0.05))
    same(capture('lam', 0.0), capture('lam', 0.03))                      # λ = 0: weights and batches (no second view later)
    assert same(capture('delta', 0.1, True), capture('delta', 0.5, True))  # the students too
    with pytest.raises(AssertionError, match='initial weights differ'):   # another seed: the check can fail
        same(capture('delta', 0.1), capture('delta', 0.1, seed=8))


def test_sweep_target_adds_exactly_the_missing_seeds(tmp_path):
    "`sweep --target-diff METRIC=DIFF`: the seeds the report says are needed, the existing ones kept, within --budget-hours."
    from contrastive_ablations.engine.runs import expand_runs
    from contrastive_ablations.engine.sweep import plans_for_target
    from fixtures import ROOT
    out = tmp_path / 'runs'
    d = write_study(out, 'ickd_margin', seeds=3, broken=False)
    for run in (p for p in d.iterdir() if p.is_dir()):
        (run / 'run_info.json').write_text(json.dumps({'status': 'done', 'notebook_wall_s': 60.0}))
    st = load_study(d)
    sd, _ = pooled_paired_sd(st, st.metric('teacher_top1'))
    want = seeds_plan(st, headline_metrics(st), {'teacher_top1': sd}).set_index('metric').loc['teacher_top1']
    n = int(want.seeds_needed_family)
    assert n > 3
    plan_file = [str(ROOT / 'plans' / 'ickd_margin.yaml')]
    said = []
    plans = plans_for_target(plan_file, out, 'smoke', None, 3, [f'teacher_top1={sd}'], say=said.append)
    assert plans[0].seeds == list(range(n)) and f'adding {n - 3} seed(s)' in said[0]
    before = {r.run_id for r in expand_runs(plans_for_target(plan_file, out, 'smoke', None, 3, [], say=said.append), 'smoke', out)}
    after = {r.run_id for r in expand_runs(plans, 'smoke', out)}
    points = st.runs.variant.nunique()
    assert before < after and len(after - before) == (n - 3) * points     # the existing runs resume, only new seeds are added
    per_seed_h = points * 60 / 3600
    capped = plans_for_target(plan_file, out, 'smoke', None, 3, [f'teacher_top1={sd}'], budget_hours=2.5 * per_seed_h, say=said.append)
    assert capped[0].seeds == [0, 1, 2, 3, 4] and 'out of reach' in said[-2]
    assert plans_for_target(plan_file, tmp_path / 'empty', 'smoke', None, 3, ['teacher_top1=1'], say=said.append)[0].seeds == [0, 1, 2]
    with pytest.raises(ValueError, match='top1 is not a metric'):
        plans_for_target(plan_file, out, 'smoke', None, 3, ['top1=1'], say=said.append)
    with pytest.raises(ValueError, match='METRIC=DIFF'):
        plans_for_target(plan_file, out, 'smoke', None, 3, ['teacher_top1=-1'], say=said.append)

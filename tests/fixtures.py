"""Test fixtures: SYNTHETIC run folders in the layout the sweep writes (numbers are random draws, not results).

`write_study` reads the study's plan from plans/<study>.yaml (so fixtures never drift from the plans) and writes
one run folder per (variant, seed) plus a manifest marked `synthetic`, into a temporary folder given by the test.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from contrastive_ablations.foundation.core import atomic_write_json, atomic_write_text, write_run_outputs
from contrastive_ablations.foundation.experiments import EXPERIMENTS
from contrastive_ablations.methods.clel.spec import OOD_PLANS
from contrastive_ablations.engine.rundata import fmt_value

ROOT = Path(__file__).resolve().parents[1]


def plan_of(study: str) -> dict:
    "The study's plan as the sweep records it in manifest.json (from plans/<study>.yaml)."
    plan = yaml.safe_load((ROOT / 'plans' / f'{study}.yaml').read_text(encoding='utf-8'))
    plan['baselines'] = [dict(label=b['label'], params=b['params']) for b in plan.get('baselines') or []]
    return plan


def default_metrics(plan: dict, role: str, value, seed: int, rng) -> dict:
    "Plausible random metrics for every declared metric of the plan's metric families."
    exp = EXPERIMENTS[Path(plan['notebook']).stem]
    shift = 0.0 if role == 'control' else rng.normal(0, 1)
    m, seen = {'status': 'ok'}, set()
    ood = OOD_PLANS[plan.get('fixed', {}).get('dataset', 'fashion_mnist')]
    for fam in plan['metrics']:
        for d in exp.metrics_of(fam):
            # as real runs: ICKD without in-run controls (one metric per role), CLEL with the dataset's OOD sets
            if (d.family, d.role) in seen and not any(d.name.endswith('_' + s) for s in ood): continue
            seen.add((d.family, d.role))
            lo, hi = d.lo if d.lo is not None else 0.0, d.hi if d.hi is not None else 500.0
            centre = lo + 0.7 * (min(hi, lo + 100) - lo)
            m[d.name] = float(np.clip(centre + (shift + rng.normal(0, 1)) * 0.02 * (min(hi, lo + 100) - lo), lo, hi))
    return m


def write_study(root, study: str = 'ickd_margin', seeds: int = 3, metrics_fn=default_metrics, profile: str = 'quick',
                broken: bool = True, sweep_seeds=None, plan_changes=None, curves: bool = True, synthetic: bool = True) -> Path:
    "Write a SYNTHETIC study into root/<study>; `metrics_fn(plan, role, value, seed, rng)` gives each run's metrics."
    plan = {**plan_of(study), **(plan_changes or {}), 'seeds': list(range(seeds))}
    par, rng, rows = plan['parameter'], np.random.default_rng(0), []
    values = list(dict.fromkeys([plan['control'], *plan['values']]))
    grid = [('control' if v == plan['control'] else 'ablation', f'{par}={fmt_value(v)}', {**plan.get('fixed', {}), par: v}) for v in values]
    grid += [('baseline', b['label'], {**plan.get('fixed', {}), par: plan['control'], **b['params']}) for b in plan['baselines']]
    d = Path(root) / study
    for role, label, p in grid:
        for s in range(seeds):
            rid = f"{label.replace(' ', '_').replace('/', '_')}-seed={s}"
            c = pd.DataFrame([dict(run='teacher', kind='epoch', epoch=e, step=e, val_acc=0.5 + 0.1 * e) for e in range(3)]) if curves else None
            write_run_outputs(d / rid, {**p, 'seed': s, 'profile': profile}, metrics_fn(plan, role, p[par], s, rng), c)
            rows.append(dict(run_id=rid, dir=rid, role=role, label=label, parameter=par, value=p[par], seed=s, params={**p, 'seed': s}, state='done'))
    if broken:
        v = plan['values'][-1]
        rid = f'{par}={fmt_value(v)}-seed={seeds}-failed'
        atomic_write_json(d / rid / 'params.json', {par: v, 'seed': seeds})
        atomic_write_text(d / rid / 'error.txt', 'Traceback (most recent call last):\n  ...\nRuntimeError: synthetic failure\n')
        rid2 = f'{par}={fmt_value(v)}-seed={seeds}-diverged'
        write_run_outputs(d / rid2, {par: v, 'seed': seeds}, {'status': 'diverged', **{m: None for m in ('teacher_top1', 'fid')}})
        rows += [dict(run_id=r, dir=r, role='ablation', label=f'{par}={fmt_value(v)}', seed=seeds, params={par: v, 'seed': seeds},
                      state=st) for r, st in ((rid, 'failed'), (rid2, 'done'))]
    atomic_write_json(d / 'manifest.json', dict(study=study, plan=plan, profile=profile, synthetic=synthetic,
                                                sweep={'seeds': sweep_seeds}, runs=rows))
    return d


EXAMPLE = ROOT / 'examples' / 'label_smoothing'


def install_example(target: Path) -> dict:
    """`pip install` the example method package (examples/label_smoothing) into `target`, not into this environment;
    returns the environment of a process that has it installed (its folder first on PYTHONPATH)."""
    import os, shutil, subprocess, sys, tempfile
    with tempfile.TemporaryDirectory() as tmp:   # built from a copy: two test processes may install it at once
        src = shutil.copytree(EXAMPLE, Path(tmp) / 'src', ignore=shutil.ignore_patterns('build', '*.egg-info', '__pycache__'))
        r = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--target',
                            str(target), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    path = [str(target), str(ROOT), os.environ.get('PYTHONPATH', '')]
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(path).rstrip(os.pathsep)}

"""ICKD: the paper profile's networks and one training step of each stage on CIFAR-shaped tensors (CIFAR-100 cannot
be downloaded here), a missing dataset, bad parameters, and the papermill template end to end at the smoke profile."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from contrastive_ablations.foundation.core import ParameterError
from contrastive_ablations.methods.ickd.spec import ICKD
from contrastive_ablations.foundation.experiments import template_problems
from contrastive_ablations.foundation.data import DatasetNotFoundError, load_dataset
from contrastive_ablations.foundation.networks import create_model
from contrastive_ablations.foundation.training import frozen
from contrastive_ablations.methods.ickd.distill import (CURVE_COLUMNS, profile_config, run_experiment, teacher_step_fn,
                                        student_step_fn, make_criterion)

ROOT = Path(__file__).resolve().parents[1]
ROLE_KEYS = ('top1', 'loss_volatility', 'epochs_to_95pct', 'val_auc', 'wall_s')
TEACHER_KEYS = ('selected_frac', 'intra_dist', 'inter_dist', 'soft_entropy')


def expected_keys(controls=False):
    prefixes = ['', 'vanilla_', 'nogate_'] if controls else ['']
    keys = {'wall_time_s', 'status'}
    for p in prefixes:
        keys |= {f'{p}teacher_{k}' for k in ROLE_KEYS + TEACHER_KEYS} | {f'{p}student_{k}' for k in ROLE_KEYS}
    return keys


def test_paper_profile_steps_on_cifar_shaped_tensors():
    "One teacher step and one student step of the paper profile's networks on random 32x32x3, 100-class data."
    cfg = profile_config('paper', 'cifar100')
    assert (cfg.teacher_arch, cfg.student_arch, cfg.batch_size, cfg.lr) == ('resnet32x4', 'resnet8x4', 64, 0.05)
    assert cfg.milestones == (150, 180, 210) and cfg.teacher_epochs == cfg.student_epochs == 240
    p = ICKD.validate({'profile': 'paper', 'dataset': 'cifar100', 'queue_len': 4})
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 100, (8,))
    y[1] = y[0]                                           # at least one anchor with a batch negative
    teacher = create_model(cfg.teacher_arch, n_classes=100, in_channels=3)
    crit = make_criterion(teacher, 100, p)
    opt = torch.optim.SGD(list(teacher.parameters()) + list(crit.parameters()), lr=0.05, momentum=0.9)
    out = teacher_step_fn(teacher, crit, cfg, p, g)(x, y, 0)
    assert out['loss'].ndim == 0 and torch.isfinite(out['loss'])
    assert {'ce', 'intra', 'selected_frac'} <= set(out)
    opt.zero_grad(); out['loss'].backward(); opt.step()
    assert len(crit.queue) > 0
    student = create_model(cfg.student_arch, n_classes=100, in_channels=3)
    before = [q.detach().clone() for q in teacher.parameters()]
    sopt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    with frozen(teacher): sout = student_step_fn(student, teacher, cfg, p, g)(x, y, 0)
    sopt.zero_grad(); sout['loss'].backward(); sopt.step()
    assert torch.isfinite(sout['loss'])
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))   # the teacher is frozen


def test_missing_dataset_is_a_clear_error():
    try:
        load_dataset('cifar100', 'test')
    except DatasetNotFoundError:
        with pytest.raises(DatasetNotFoundError, match='download'):
            run_experiment(profile='paper', dataset='cifar100', progress=False)
    else:
        pytest.skip('CIFAR-100 is present on this machine')


@pytest.mark.parametrize('bad', [{'delta': 1.7}, {'lam': -1}, {'gate': 'soft'}, {'tau': 0}, {'queue_len': -1},
                                 {'profile': 'fast'}, {'dataset': 'imagenet'}, {'teacher_epochs': 0}, {'typo': 1}])
def test_bad_params(bad):
    with pytest.raises(ParameterError):
        run_experiment(progress=False, **bad)


def test_bad_param_messages_name_the_range():
    with pytest.raises(ParameterError, match=r"'delta'.*\[0, 1\]"):
        ICKD.validate({'delta': 1.7})
    with pytest.raises(ParameterError, match=r"'lam'.*\[0"):
        ICKD.validate({'lam': -1})


@pytest.mark.slow
def test_smoke_run_with_controls():
    m, curves, extras = run_experiment(profile='smoke', with_controls=True, progress=False)
    assert set(m) == expected_keys(True) and m['status'] == 'ok'
    assert list(curves.columns) == CURVE_COLUMNS
    assert set(curves.run) == {'teacher', 'student', 'vanilla_teacher', 'vanilla_student', 'nogate_teacher', 'nogate_student'}
    # the vanilla teacher has no intra-class term; the ungated one lets every anchor with a negative in
    assert curves.query("run == 'vanilla_teacher'")['intra'].isna().all()
    assert pd.isna(m['vanilla_teacher_selected_frac'])
    assert m['nogate_teacher_selected_frac'] >= m['teacher_selected_frac']


def test_parameters_cell_matches_params():
    "The template's parameters cell declares exactly the knobs, with the same defaults."
    nb = json.loads((ROOT / 'ablation_nbs' / 'ickd.ipynb').read_text())
    cells = [c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', [])]
    assert len(cells) == 1
    ns = {}
    exec(''.join(cells[0]['source']), ns)
    declared = {k: v for k, v in ns.items() if not k.startswith('__')}
    assert declared == {k: spec.default for k, spec in ICKD.knobs.items()}
    assert template_problems(ICKD) == []


def papermill(out_dir: Path, *params, cwd=ROOT):
    cmd = [sys.executable, '-m', 'papermill', str(ROOT / 'ablation_nbs' / 'ickd.ipynb'), str(out_dir / 'run.ipynb'),
           '-k', 'python3', '--no-progress-bar']
    for k, v in params: cmd += ['-p', k, str(v)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_ablation_notebook_smoke(tmp_path):
    d = tmp_path / 'D'
    r = papermill(tmp_path, ('profile', 'smoke'), ('delta', 0.3), ('out_dir', d))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {'metrics.json', 'curves.csv', 'params.json'} <= {p.name for p in d.iterdir()}
    m = json.loads((d / 'metrics.json').read_text())
    assert set(m) == expected_keys() and m['status'] == 'ok'
    params = json.loads((d / 'params.json').read_text())
    assert params['delta'] == 0.3 and params['profile'] == 'smoke' and set(params) == set(ICKD.knobs)
    assert list(pd.read_csv(d / 'curves.csv').columns) == CURVE_COLUMNS


def test_ablation_notebook_bad_delta_fails_fast(tmp_path):
    d = tmp_path / 'D'
    r = papermill(tmp_path, ('profile', 'smoke'), ('delta', 1.7), ('out_dir', d))
    assert r.returncode != 0
    assert "parameter 'delta' = 1.7" in r.stderr + r.stdout and '[0, 1]' in r.stderr + r.stdout
    assert not d.exists()                                    # nothing trained, nothing written

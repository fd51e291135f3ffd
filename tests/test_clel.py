"""CLEL: the paper profile's networks (official base EBM, ResNet-18 encoder) and one full training iteration on
CIFAR-shaped random tensors (CIFAR-10 cannot be downloaded here), bad parameters, and the papermill template end to
end at the smoke profile for every framework and for the REMOVE variant (one test, runs in parallel processes)."""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from contrastive_ablations.core import ParameterError, write_run_outputs
from contrastive_ablations.experiments import CLEL, CLEL_FRAMEWORKS
from contrastive_ablations.data import DATASETS
from contrastive_ablations.ebm import base_ebm
from contrastive_ablations.networks import count_parameters
from contrastive_ablations.contrastive import create_framework
from contrastive_ablations.clel import CURVE_COLUMNS, profile_config, build_trainer, run, run_experiment
from contrastive_ablations.training import fit
from dataclasses import replace

ROOT = Path(__file__).resolve().parents[1]
FIXED_KEYS = {'fid', 'fid_n_samples', 'auroc_mean', 'e_pos_final', 'e_neg_final', 'wall_time_s', 'status'}


def test_paper_profile_networks():
    "Official base EBM ≈ 7M parameters (trunk + head 256->2048->128 + g 128->2048->128); ResNet-18 encoder."
    cfg = profile_config('paper', 'cifar10')
    assert (cfg.ebm_arch, cfg.encoder_arch, cfg.sgld_steps, cfg.sgld_step_size, cfg.sgld_noise) == ('base', 'resnet18', 60, 100.0, 0.001)
    assert (cfg.batch_size, cfg.iterations, cfg.buffer_size, cfg.reinit_prob, cfg.ebm_lr) == (64, 100_000, 10_000, 0.001, 1e-4)
    ebm = base_ebm(3, 128)
    assert 6.5e6 < count_parameters(ebm) < 7.5e6
    enc = create_framework('simclr', 3, 32, 128, 'resnet18')
    assert 11e6 < sum(p.numel() for p in enc.backbone.parameters()) < 11.5e6   # ResNet-18 (CIFAR stem)


def test_paper_profile_one_iteration_on_cifar_shaped_tensors():
    "One full CLEL iteration (SGLD, both losses, one backward, both optimisers, EMA) with the paper networks."
    p = CLEL.validate({'profile': 'paper', 'dataset': 'cifar10', 'device': 'cpu'})
    cfg = replace(profile_config('paper', 'cifar10'), batch_size=4, sgld_steps=2, buffer_size=16, epochs=1, steps_per_epoch=1)
    gen = torch.Generator().manual_seed(0); torch.manual_seed(0)
    tr = build_trainer(p, cfg, torch.device('cpu'), gen)
    ebm0 = [q.detach().clone() for q in tr.model.ebm.parameters()]
    enc0 = [q.detach().clone() for q in tr.model.encoder.trainable_parameters()]
    buf0 = tr.sampler.buffer.images.clone()
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    res = fit(tr.step_fn, batches, 1, tr.optimizers, tr.schedulers, after_step=tr.after_step, progress=False)
    assert res.status == 'ok', res.message
    row = res.steps.iloc[0]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ('loss', 'e_pos', 'e_neg', 'latent_loss', 'encoder_loss'))
    assert any(not torch.equal(a, b) for a, b in zip(ebm0, tr.model.ebm.parameters()))        # the EBM moved
    assert any(not torch.equal(a, b) for a, b in zip(enc0, tr.model.encoder.trainable_parameters()))  # the encoder moved
    assert (tr.sampler.buffer.images != buf0).flatten(1).any(1).sum() >= 1                    # chains written back
    ema = list(tr.model.ema_ebm.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ebm0, ema))                               # EMA followed
    assert all(not q.requires_grad for q in ema)


@pytest.mark.parametrize('bad', [{'framework': 'simclrr'}, {'beta': -0.1}, {'reinit_prob': 2.0}, {'sgld_steps': -1},
                                 {'fid_source': 'cache'}, {'buffer_augment': 'rotate'}, {'profile': 'fast'}])
def test_bad_params(bad):
    with pytest.raises(ParameterError, match=repr(next(iter(bad)))):
        run_experiment(**bad)


def test_bad_framework_lists_the_valid_names():
    with pytest.raises(ParameterError) as e: run_experiment(framework='simclrr')
    assert all(repr(n) in str(e.value) for n in CLEL_FRAMEWORKS)


def papermill(out_dir: Path, *params):
    cmd = [sys.executable, '-m', 'papermill', str(ROOT / 'ablation_nbs' / 'clel.ipynb'), str(out_dir / 'run.ipynb'),
           '-k', 'python3', '--no-progress-bar']
    for k, v in params: cmd += ['-p', k, str(v)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.mark.slow
def test_ablation_notebook_smoke_all_frameworks_and_variant(tmp_path):
    "Every framework, the REMOVE variant and a bad framework name through papermill (3 processes at a time)."
    runs = [(fw, True) for fw in CLEL_FRAMEWORKS] + [('simclr', False)]
    def one(run):
        fw, nd = run
        d = tmp_path / f'{fw}_{nd}'
        d.mkdir()
        return papermill(d, ('profile', 'smoke'), ('framework', fw), ('norm_direction', nd), ('out_dir', d / 'out'))
    bad_dir = tmp_path / 'bad'; bad_dir.mkdir()
    with ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(one, r) for r in runs]
        bad = ex.submit(papermill, bad_dir, ('profile', 'smoke'), ('framework', 'simclrr'), ('out_dir', bad_dir / 'out'))
        results = [f.result() for f in futures]
        bad = bad.result()
    for (fw, nd), r in zip(runs, results):
        d = tmp_path / f'{fw}_{nd}' / 'out'
        assert r.returncode == 0, (fw, nd, r.stderr[-3000:])
        assert {'metrics.json', 'curves.csv', 'params.json', 'samples.png', 'metrics_info.json'} <= {p.name for p in d.iterdir()}
        m = json.loads((d / 'metrics.json').read_text())
        assert FIXED_KEYS <= set(m) and m['status'] == 'ok', (fw, nd, m)
        assert {k[len('auroc_marginal_'):] for k in m if k.startswith('auroc_marginal_')} == \
               {k[len('auroc_'):] for k in m if k.startswith('auroc_') and not k.startswith('auroc_marginal_') and k != 'auroc_mean'}
        params = json.loads((d / 'params.json').read_text())
        assert (params['framework'], params['norm_direction'], params['profile']) == (fw, nd, 'smoke') and set(params) == set(CLEL.knobs)
        assert list(pd.read_csv(d / 'curves.csv').columns) == CURVE_COLUMNS
        info = json.loads((d / 'metrics_info.json').read_text())
        assert info['fid_extractor'] and info['fid_source'].startswith('fresh')
    assert bad.returncode != 0
    assert "parameter 'framework' = 'simclrr'" in bad.stderr + bad.stdout and "'byol'" in bad.stderr + bad.stdout
    assert not (bad_dir / 'out').exists()                      # nothing trained, nothing written


def test_divergence_is_a_result(tmp_path, monkeypatch):
    "A run whose energies leave [-energy_limit, energy_limit] ends with status 'diverged', NaN metrics and its files."
    monkeypatch.setitem(CLEL.profiles, 'smoke', {**CLEL.profiles['smoke'], 'energy_limit': 1e-12})
    params = CLEL.validate({'profile': 'smoke', 'framework': 'none', 'out_dir': str(tmp_path), 'device': 'cpu'})
    m, curves, artifacts = run(params)
    assert m['status'] == 'diverged' and m['fid'] != m['fid']          # NaN: not evaluated
    assert 'energy_limit' in artifacts['metrics_info.json']['status_message']
    write_run_outputs(params['out_dir'], params, m, curves, artifacts)
    assert (tmp_path / 'samples.png').is_file() and (tmp_path / 'metrics_info.json').is_file()
    assert list(curves.columns) == CURVE_COLUMNS

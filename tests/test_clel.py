"""CLEL: the paper profile's networks (official base EBM, ResNet-18 encoder) and one full training iteration on
CIFAR-shaped random tensors (CIFAR-10 cannot be downloaded here), bad parameters, and the papermill template end to
end at the smoke profile for every framework and for the REMOVE variant (the runs of the shared smoke sweep)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contrastive_ablations.foundation.core import ParameterError, write_run_outputs
from contrastive_ablations.methods.clel.spec import CLEL, CLEL_FRAMEWORKS
from contrastive_ablations.foundation.data import DATASETS
from contrastive_ablations.methods.clel.ebm import base_ebm
from contrastive_ablations.foundation.networks import count_parameters
from contrastive_ablations.methods.clel.contrastive import create_framework
from contrastive_ablations.methods.clel.train import CURVE_COLUMNS, profile_config, build_trainer, run, run_experiment
from contrastive_ablations.foundation.training import fit
from dataclasses import replace

ROOT = Path(__file__).resolve().parents[1]
FIXED_KEYS = {'fid', 'fid_fresh', 'fid_buffer', 'fid_n_samples', 'auroc_mean', 'e_pos_final', 'e_neg_final', 'wall_time_s', 'status'}


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
    assert all(torch.equal(a, b) for a, b in zip(ebm0, ema))      # official EMA: iteration 1 copies before the step
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


def test_ablation_notebook_smoke_all_frameworks_and_variant(smoke_runs):
    "Every framework and the REMOVE variant through the template (the shared smoke sweep's runs): their files, metrics and parameters."
    dirs = {}
    for d in [*(smoke_runs / 'clel_framework').iterdir(), *(smoke_runs / 'clel_norm_direction').iterdir()]:
        if d.is_dir() and (d / 'params.json').is_file():
            p = json.loads((d / 'params.json').read_text())
            dirs[(p['framework'], p['norm_direction'])] = d
    assert set(dirs) >= {(fw, True) for fw in CLEL_FRAMEWORKS} | {('simclr', False)}, sorted(dirs)
    for (fw, nd), d in dirs.items():
        assert {'metrics.json', 'curves.csv', 'params.json', 'samples.png', 'samples_buffer.png', 'metrics_info.json'} <= \
               {p.name for p in d.iterdir()}
        m = json.loads((d / 'metrics.json').read_text())
        assert FIXED_KEYS <= set(m) and m['status'] == 'ok', (fw, nd, m)
        assert {k[len('auroc_marginal_'):] for k in m if k.startswith('auroc_marginal_')} == \
               {k[len('auroc_'):] for k in m if k.startswith('auroc_') and not k.startswith('auroc_marginal_') and k != 'auroc_mean'}
        params = json.loads((d / 'params.json').read_text())
        assert params['profile'] == 'smoke' and set(params) == set(CLEL.knobs)
        assert list(pd.read_csv(d / 'curves.csv').columns) == CURVE_COLUMNS
        info = json.loads((d / 'metrics_info.json').read_text())
        assert info['fid_extractor'] and info['fid_source'].startswith('fresh')


def test_ablation_notebook_refuses_a_bad_framework_before_training(tmp_path):
    "papermill with a misspelt framework: the error names the parameter and the valid names, and nothing is written."
    bad = papermill(tmp_path, ('profile', 'smoke'), ('framework', 'simclrr'), ('out_dir', tmp_path / 'out'))
    assert bad.returncode != 0
    assert "parameter 'framework' = 'simclrr'" in bad.stderr + bad.stdout and "'byol'" in bad.stderr + bad.stdout
    assert not (tmp_path / 'out').exists()                      # nothing trained, nothing written


def test_divergence_is_a_result(tmp_path, monkeypatch):
    "A run whose energies leave [-energy_limit, energy_limit] ends with status 'diverged', NaN metrics and its files."
    monkeypatch.setitem(CLEL.profiles, 'smoke', {**CLEL.profiles['smoke'], 'energy_limit': 1e-12})
    params = CLEL.validate({'profile': 'smoke', 'framework': 'none', 'out_dir': str(tmp_path), 'device': 'cpu'})
    m, curves, artifacts = run(params)
    assert m['status'] == 'diverged' and m['fid'] != m['fid']          # NaN: not evaluated
    assert 'energy_limit' in artifacts['metrics_info.json']['status_message']
    write_run_outputs(params['out_dir'], params, m, curves, artifacts)
    assert (tmp_path / 'samples.png').is_file() and (tmp_path / 'metrics_info.json').is_file()
    assert not {'samples_fresh.png', 'samples_buffer.png'} & set(artifacts) and m['fid_fresh'] != m['fid_fresh']   # no fresh chains of a diverged run
    assert list(curves.columns) == CURVE_COLUMNS


# ---- the paper profile follows the official CLEL recipe (one test per point) ----
from contrastive_ablations.methods.clel.spec import CIFAR10_MEAN, CIFAR10_STD, CLEL_PROFILES
from contrastive_ablations.methods.clel.train import (OFFICIAL_RECIPE, DEVIATIONS,
                                        deviations_table, make_buffer_augment, _fresh_samples)
from contrastive_ablations.foundation.data import clel_augment
from contrastive_ablations.methods.clel.metrics import to_uint8


def _paper_trainer(**over):
    "A paper-profile trainer on CIFAR-shaped data, shrunk in size only (batch 4, 2 SGLD steps, buffer 16)."
    p = CLEL.validate({'profile': 'paper', 'dataset': 'cifar10', 'device': 'cpu'})
    cfg = replace(profile_config('paper', 'cifar10'), **{**dict(batch_size=4, sgld_steps=2, buffer_size=16, epochs=1,
                                                                steps_per_epoch=1), **over})
    torch.manual_seed(0)
    return build_trainer(p, cfg, torch.device('cpu'), torch.Generator().manual_seed(0)), cfg


def _batches(n=1):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def test_paper_point1_input_map_is_cifar10_standardisation():
    tr, cfg = _paper_trainer()
    ebm = tr.model.ebm.eval()
    assert torch.allclose(ebm.input_mean.flatten(), torch.tensor(CIFAR10_MEAN))
    assert torch.allclose(ebm.input_std.flatten(), torch.tensor(CIFAR10_STD))
    x = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(ebm.features(x), ebm.head(ebm.trunk((x - m) / s)), atol=1e-6)
    assert profile_config('quick').ebm_input_mean == (0.5,)   # quick keeps 2x - 1 (a listed deviation)


def test_paper_point2_strong_augmentation_official_parameters():
    cfg = profile_config('paper', 'cifar10')
    assert cfg.buffer_augment == 'clel' and cfg.encoder_augment == 'clel'
    import inspect
    from contrastive_ablations.foundation.data import pixel_resized_crop, color_jiggle
    d = {k: v.default for k, v in inspect.signature(clel_augment).parameters.items()}
    assert d['scale'] == (0.08, 1.0) and d['jitter'] == (0.4, 0.4, 0.4, 0.1) and d['jitter_p'] == 0.8 and d['grayscale_p'] == 0.2
    assert inspect.signature(pixel_resized_crop).parameters['mode'].default == 'bicubic'
    x = torch.rand(8, 3, 32, 32)
    assert torch.equal(make_buffer_augment('clel')(x, torch.Generator().manual_seed(3)), clel_augment(x, torch.Generator().manual_seed(3)))
    # brightness adds (kornia 0.6.3): a constant 0.5 image moves by b - 1 in [-0.4, 0.4], the same for all pixels
    y = color_jiggle(torch.full((500, 1, 4, 4), 0.5), 0.4, 0.0, generator=torch.Generator().manual_seed(0)) - 0.5
    assert (y.flatten(1).std(1) < 1e-6).all() and y.abs().max() <= 0.4 + 1e-6 and y.abs().max() > 0.35


def test_paper_point3_separate_beta_view():
    tr, cfg = _paper_trainer()
    seen = {}
    orig = tr.model.losses
    tr.model.losses = lambda *a: seen.update(args=a) or orig(*a)
    res = fit(tr.step_fn, _batches(), 1, tr.optimizers, tr.schedulers, after_step=tr.after_step, progress=False)
    assert res.status == 'ok', res.message
    x_pos, x_neg, v1, v2, vb = seen['args']
    assert vb is not None and not torch.equal(vb, v1) and not torch.equal(vb, v2)
    assert profile_config('quick').beta_view == 'shared'


def test_paper_point4_spectral_norm_power_iteration_every_forward():
    counts = {}
    for name, over in (('paper', {}), ('eval', {'sgld_train_mode': False})):
        tr, cfg = _paper_trainer(**over)
        sn = tr.model.ebm.trunk.net[0].parametrizations.weight[0]
        calls = []
        sn.register_forward_pre_hook(lambda mod, inp: calls.append(mod.training))
        fit(tr.step_fn, _batches(), 1, tr.optimizers, tr.schedulers, after_step=tr.after_step, progress=False)
        counts[name] = sum(calls)   # forwards in train mode = power iterations
    assert counts['paper'] == 2 + 1      # every SGLD forward (2 steps) + the loss forward
    assert counts['eval'] == 1           # eval-mode sampling: only the loss forward


def test_paper_point5_buffer_draws_without_replacement():
    tr, cfg = _paper_trainer()
    assert cfg.buffer_replace is False and tr.sampler.buffer.replace is False
    for _ in range(50):
        _, idx = tr.sampler.buffer.draw(16)
        assert len(set(idx.tolist())) == 16


def test_paper_point6_ema_copies_then_decays_before_the_step():
    cfg0 = profile_config('paper', 'cifar10')
    assert cfg0.ema_mode == 'copy_warmup' and cfg0.ema_halflife / cfg0.batch_size == 312.5   # copies at iterations 1..312
    tr, cfg = _paper_trainer(ema_halflife=8.0)   # batch 4: copy at iteration 1, decay 0.5 ** 0.5 from iteration 2
    w0 = [q.detach().clone() for q in tr.model.ebm.parameters()]
    after1 = []
    orig = tr.after_step
    def after(step):
        orig(step)
        if step == 1: after1.extend(q.detach().clone() for q in tr.model.ebm.parameters())
    res = fit(tr.step_fn, _batches(2), 1, tr.optimizers, tr.schedulers, after_step=after, steps_per_epoch=2, progress=False)
    assert res.status == 'ok', res.message
    d = 0.5 ** 0.5
    for e, a, b in zip(tr.model.ema_ebm.parameters(), w0, after1):   # before step 2: d * (copy of w0) + (1 - d) * w1
        assert torch.allclose(e, d * a + (1 - d) * b, atol=1e-6)


def test_paper_point7_initialisation():
    tr, cfg = _paper_trainer()
    convs = [m for m in tr.model.ebm.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None or c.bias.abs().max() == 0 for c in convs)
    big = [c.parametrizations.weight.original for c in convs if c.parametrizations.weight.original.numel() > 100_000]
    assert big and all(abs(w.std().item() * w[0].numel() ** 0.5 - 1) < 0.05 for w in big)   # Kaiming-normal fan-in, gain 1
    bb = tr.model.encoder.backbone
    assert all(b.bn2.weight.abs().max() == 0 for b in bb.blocks)                               # last BN of each block zero
    w = bb.blocks[4].conv2.weight
    assert abs(w.std().item() * (w.shape[0] * w[0, 0].numel() / 2) ** 0.5 - 1) < 0.05           # Kaiming fan-out (ReLU)


def test_paper_point8_final_fid_rounds_and_quantisation():
    cfg0 = profile_config('paper', 'cifar10')
    assert (cfg0.fid_source, cfg0.fresh_rounds, cfg0.sgld_steps, cfg0.fresh_reaugment, cfg0.fid_quantize) == ('fresh', 10, 60, True, 'floor256')
    tr, cfg = _paper_trainer(sgld_steps=1)
    calls = []
    aug = tr.sampler.buffer.augment
    tr.sampler.buffer.augment = lambda x, generator=None: calls.append(len(x)) or aug(x, generator)
    out = _fresh_samples(tr.model, tr.sampler, 6, cfg0.fresh_rounds, cfg.fresh_reaugment)
    assert out.shape == (6, 3, 32, 32) and calls == [6] * 10    # re-augmented before each of the 10 rounds
    assert to_uint8(torch.tensor([0.999, 0.5, 1.0]).view(1, 3, 1, 1), cfg0.fid_quantize).flatten().tolist() == [255, 128, 255]


def test_deviations_table_covers_every_departure(monkeypatch):
    dev = deviations_table()
    assert not dev.why.str.startswith('(no entry').any()
    assert set(dev[dev.profile == 'paper'].field) == {'fid_n_reference'}
    monkeypatch.setitem(CLEL_PROFILES, 'quick', dict(CLEL_PROFILES['quick'], reinit_prob=0.05))
    assert '(no entry for this value)' in set(deviations_table(('quick',)).why)


@pytest.mark.slow
def test_gpu_check_cpu_path(tmp_path):
    "benchmarks/gpu_check.py on the CPU with small networks (the paper's are checked above, in fp32): every number is reported and both losses agree across precisions."
    out = tmp_path / 'gpu_check.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu_check.py'), '--device', 'cpu', '--iters', '1',
                        '--warmup', '0', '--batch', '4', '--sgld-steps', '2', '--small', '--out', str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep['small_networks'] is True
    for name, roles in (('ickd', ('teacher', 'student')), ('clel', (None,))):
        assert rep[name]['loss_agrees'], rep[name]
        for prec in ('fp32', 'bf16'):
            for role in roles:
                v = rep[name][prec][role] if role else rep[name][prec]
                assert v['it_per_s'] > 0 and v['full_run_h'] > 0 and v['last_loss_finite'], (name, prec, v)


def test_fid_curve_measures_without_changing_the_training(monkeypatch):
    "fid_curve's measurements draw from their own generator: its training losses are those of an ordinary run."
    import contrastive_ablations.methods.clel.train as C
    p = CLEL.validate({'profile': 'smoke', 'framework': 'simclr', 'device': 'cpu', 'iterations': 6})
    results, fit = [], C.fit
    monkeypatch.setattr(C, 'fit', lambda *a, **k: results.append(fit(*a, **k)) or results[-1])
    curve, last = C.fid_curve(p, every=3, n_samples=100)
    C.run_experiment(**p)
    assert list(curve.iteration) == [3, 6] and last.shape == (100, 1, 28, 28)
    # equal up to float noise (a measurement that took from the training's generator would change the losses at
    # once and by far more: other batches, other SGLD noise); CPU matrix kernels may round differently after the
    # measurement's allocations, seen as a 1e-5 relative difference in one loss value
    a, b = results[0].steps['loss'].to_numpy(), results[1].steps['loss'].to_numpy()
    assert len(a) == len(b) == 6 and np.allclose(a, b, rtol=1e-4, atol=0), (a, b)

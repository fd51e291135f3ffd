"""Time of one CLEL training iteration (SGLD included) through the suite vs a plain PyTorch implementation.

Both paths run the same networks (deep copies), the same batch and the same number of SGLD steps on the same
machine, interleaved round by round (suite, plain, suite, plain, ...), so load changes hit both alike.
The suite path is `clel.build_trainer` + `training.fit` (sampler, replay buffer, CLELModel.losses, EMA, logging);
the plain path is a hand-written loop: buffer indexing, SGLD, the CLEL loss, one backward, optimiser steps, EMA.
Prints per-round times and the ratio suite/plain of the median seconds per iteration.

    python benchmarks/bench_clel_iter.py --profile quick --framework simclr --iters 5 --rounds 3
"""
import argparse, copy, json, math, statistics, sys, time
from dataclasses import replace

from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package
from contrastive_ablations.foundation.core import get_device, resolve_precision
from contrastive_ablations.methods.clel.train import _resolve, build_trainer
from contrastive_ablations.foundation.data import DATASETS, simclr_augment, random_hflip
from contrastive_ablations.foundation.training import fit


def plain_setup(tr, cfg, device, seed):
    "Copies of the suite's networks and a plain optimiser/buffer state."
    ebm = copy.deepcopy(tr.model.ebm)
    enc = copy.deepcopy(tr.model.encoder) if tr.model.encoder is not None else None
    ema_ebm = copy.deepcopy(ebm).requires_grad_(False)
    ema_enc = copy.deepcopy(enc).requires_grad_(False) if enc is not None else None
    opt = torch.optim.Adam(ebm.parameters(), lr=cfg.ebm_lr, betas=(0.0, 0.999))
    eopt = enc.recommended_optimizer(cfg.encoder_lr) if enc is not None else None
    shape = tr.sampler.buffer.images.shape[1:]
    g = torch.Generator().manual_seed(seed)
    buf = torch.rand((cfg.buffer_size, *shape), generator=g).to(device)
    return dict(ebm=ebm, enc=enc, ema_ebm=ema_ebm, ema_enc=ema_enc, opt=opt, eopt=eopt, buf=buf, g=g, step=0)


def plain_iteration(s, x, cfg, beta, decay):
    "One CLEL iteration written directly in PyTorch."
    ebm, enc, g = s['ebm'], s['enc'], s['g']
    B = len(x)
    s['step'] += 1
    for pg in s['opt'].param_groups: pg['lr'] = cfg.ebm_lr * min(1.0, s['step'] / max(1, cfg.ebm_warmup))
    # replay buffer draw, re-initialisation, flip augmentation
    idx = torch.randint(len(s['buf']), (B,), generator=g)
    xn = s['buf'][idx].clone()
    re = torch.rand(B, generator=g) < cfg.reinit_prob
    if re.any(): xn[re] = torch.rand((int(re.sum()), *xn.shape[1:]), generator=g).to(xn.device)
    flip = torch.rand(B, generator=g) < 0.5
    xn = torch.where(flip.to(xn.device)[:, None, None, None], xn.flip(-1), xn)
    # SGLD on ½‖f‖² (CLEL) with frozen parameters
    ebm.eval(); ebm.requires_grad_(False)
    for _ in range(cfg.sgld_steps):
        xn.requires_grad_(True)
        e = 0.5 * ebm.features(xn).pow(2).sum(1)
        grad, = torch.autograd.grad(e.sum(), xn)
        xn = (xn.detach() - cfg.sgld_step_size * grad
              + cfg.sgld_noise * torch.randn(xn.shape, generator=g).to(xn.device)).clamp(0, 1)
    ebm.train(); ebm.requires_grad_(True)
    s['buf'][idx] = xn
    # losses
    xp = x * 255 / 256 + torch.rand(x.shape, generator=g).to(x.device) / 256
    f = ebm.features(torch.cat([xp, xn]))
    ep, en = (0.5 * f.pow(2).sum(1)).split(B)
    loss = ep.mean() - en.mean() + cfg.alpha * (ep.pow(2) + en.pow(2)).mean()
    if enc is not None:
        v1, v2 = simclr_augment(x, generator=g), simclr_augment(x, generator=g)
        with torch.no_grad():
            z = enc.latent(v1)
            gen = F.normalize(ebm.g(f[B:].detach()), dim=1)
        loss = loss - beta * F.cosine_similarity(ebm.g(f[:B]), z).mean()
        el, _ = enc.loss(v1, v2, gen if enc.uses_negatives else None)
        loss = loss + el
    s['opt'].zero_grad(set_to_none=True)
    if s['eopt'] is not None: s['eopt'].zero_grad(set_to_none=True)
    loss.backward()
    s['opt'].step()
    if s['eopt'] is not None: s['eopt'].step(); enc.after_step()
    with torch.no_grad():
        for a, b in zip(s['ema_ebm'].parameters(), ebm.parameters()): a.lerp_(b, 1 - decay)
        if enc is not None:
            for a, b in zip(s['ema_enc'].parameters(), enc.parameters()): a.lerp_(b, 1 - decay)
    return loss.item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--profile', default='quick', choices=('smoke', 'quick', 'paper'))
    ap.add_argument('--dataset', default=None, help='default: fashion_mnist (smoke/quick), cifar10 (paper)')
    ap.add_argument('--framework', default='simclr')
    ap.add_argument('--iters', type=int, default=5, help='iterations per timed round')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds per path')
    ap.add_argument('--warmup', type=int, default=2, help='untimed iterations per path first')
    ap.add_argument('--sgld-steps', type=int, default=None)
    ap.add_argument('--batch-size', type=int, default=None)
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: leave as is)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16'),
                    help="the suite path's precision, as the knob (the plain path is the official float32 recipe)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    dataset = a.dataset or ('cifar10' if a.profile == 'paper' else 'fashion_mnist')
    params = {'profile': a.profile, 'dataset': dataset, 'framework': a.framework, 'device': a.device, 'precision': a.precision}
    if a.sgld_steps is not None: params['sgld_steps'] = a.sgld_steps
    if a.batch_size is not None: params['batch_size'] = a.batch_size
    p, cfg = _resolve(params)
    device = get_device(p['device'])
    info = DATASETS[dataset]
    torch.manual_seed(0)
    tr = build_trainer(p, cfg, device, torch.Generator().manual_seed(0))
    s = plain_setup(tr, cfg, device, 1)
    beta = 0.0 if p['framework'] == 'none' else p['beta']
    decay = 0.5 ** (cfg.batch_size / cfg.ema_halflife)
    # random data of the dataset's shape: the iteration's cost does not depend on the pixel values
    x = torch.rand(cfg.batch_size, info.channels, info.size, info.size, device=device)
    y = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda: None)

    def suite(n):
        sync(); t = time.perf_counter()
        res = fit(tr.step_fn, [(x, y)], 1, tr.optimizers, tr.schedulers, after_step=tr.after_step,
                  steps_per_epoch=n, progress=False, precision=p['precision'])
        sync(); dt = time.perf_counter() - t
        assert res.status == 'ok', res.message
        return dt / n

    def plain(n):
        sync(); t = time.perf_counter()
        for _ in range(n): plain_iteration(s, x, cfg, beta, decay)
        sync(); return (time.perf_counter() - t) / n

    suite(a.warmup); plain(a.warmup)
    ts, tp = [], []
    for r in range(a.rounds):
        ts.append(suite(a.iters)); tp.append(plain(a.iters))
        print(f'round {r}: suite {ts[-1]:.3f} s/it, plain {tp[-1]:.3f} s/it', flush=True)
    ms, mp = statistics.median(ts), statistics.median(tp)
    out = dict(profile=a.profile, dataset=dataset, framework=p['framework'], precision=p['precision'],
               precision_used=resolve_precision(p['precision'], device), batch_size=cfg.batch_size,
               sgld_steps=cfg.sgld_steps, device=str(device), threads=torch.get_num_threads(),
               suite_s_per_iter=round(ms, 4), plain_s_per_iter=round(mp, 4), ratio_suite_over_plain=round(ms / mp, 3),
               rounds=a.rounds, iters_per_round=a.iters)
    print(json.dumps(out))
    return out


if __name__ == '__main__':
    main()

"""Throughput of the ICKD teacher through the suite's loop (`training.fit`) versus a plain PyTorch loop.

Both loops run the same network (`cnn_teacher` by default), batch, data, augmentation and loss (the ICKD teacher
step: two views in one forward pass, CE + lam * gated intra-class contrastive loss with its per-class cache), from
the same initial weights. Repetitions are interleaved in ABBA order (suite, plain, plain, suite, ...) so that a change of machine
load hits both alike; the median images/s of each and their ratio are printed. The goal is a suite overhead of at
most 10% (ratio >= 0.90).

    python benchmarks/bench_ickd_loop.py [--steps 60] [--reps 5] [--batch 128] [--arch cnn_teacher] [--threads 2]
"""
import argparse
import copy
import os
import statistics
import time

import torch

from contrastive_ablations.foundation.data import BatchLoader, load_dataset
from contrastive_ablations.methods.ickd.spec import ICKD
from contrastive_ablations.methods.ickd.distill import make_criterion, profile_config, teacher_step_fn
from contrastive_ablations.foundation.networks import create_model
from contrastive_ablations.foundation.training import fit


def make_run(model0, crit0, cfg, p, data, steps, seed):
    "Fresh copies of the model, criterion, optimizer, loader and step function (identical for both loops)."
    model, crit = copy.deepcopy(model0), copy.deepcopy(crit0)
    opt = torch.optim.SGD(list(model.parameters()) + list(crit.parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loader = BatchLoader(data, cfg.batch_size, seed=seed, device='cpu')
    step = teacher_step_fn(model, crit, cfg, p, torch.Generator().manual_seed(seed))
    model.train()
    return model, opt, sched, loader, step


def run_suite(model0, crit0, cfg, p, data, steps):
    model, opt, sched, loader, step = make_run(model0, crit0, cfg, p, data, steps, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit(step, loader, 1, [opt], [sched], steps_per_epoch=steps, progress=False)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert res.status == 'ok' and len(res.steps) == steps, res.message
    return steps * cfg.batch_size / dt, steps * cfg.batch_size / dc


def run_plain(model0, crit0, cfg, p, data, steps):
    model, opt, sched, loader, step = make_run(model0, crit0, cfg, p, data, steps, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    it, n = iter(loader), 0
    while n < steps:
        try: x, y = next(it)
        except StopIteration:
            it = iter(loader); continue
        out = step(x, y, n)
        opt.zero_grad(set_to_none=True)
        out['loss'].backward()
        opt.step(); sched.step()
        n += 1
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return steps * cfg.batch_size / dt, steps * cfg.batch_size / dc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=60, help='training steps per measurement')
    ap.add_argument('--reps', type=int, default=5, help='interleaved repetitions of each loop')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--arch', default='cnn_teacher')
    ap.add_argument('--lam', type=float, default=0.03, help='0 measures the vanilla (one-view) teacher')
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    p = ICKD.validate({'lam': a.lam, 'batch_size': a.batch, 'teacher_arch': a.arch})
    cfg = profile_config('quick', 'fashion_mnist')
    cfg.batch_size, cfg.teacher_arch = a.batch, a.arch
    data = load_dataset('fashion_mnist', 'train').subset(a.batch * a.steps, seed=0)
    torch.manual_seed(0)
    model0 = create_model(a.arch, n_classes=10, in_channels=1)
    crit0 = make_criterion(model0, 10, p)
    run_suite(model0, crit0, cfg, p, data, 5); run_plain(model0, crit0, cfg, p, data, 5)   # warm-up
    suite, plain = [], []
    for r in range(a.reps):
        # ABBA order: which loop goes first alternates, so a drift of the machine's load favours neither
        if r % 2 == 0:
            suite.append(run_suite(model0, crit0, cfg, p, data, a.steps))
            plain.append(run_plain(model0, crit0, cfg, p, data, a.steps))
        else:
            plain.append(run_plain(model0, crit0, cfg, p, data, a.steps))
            suite.append(run_suite(model0, crit0, cfg, p, data, a.steps))
        print(f'rep {r}: wall: suite {suite[-1][0]:7.1f} img/s  plain {plain[-1][0]:7.1f} img/s  ratio {suite[-1][0] / plain[-1][0]:.3f}'
              f'   | per CPU second: suite {suite[-1][1]:7.1f}  plain {plain[-1][1]:7.1f}  ratio {suite[-1][1] / plain[-1][1]:.3f}',
              flush=True)
    load = os.getloadavg()[0]
    print(f'{a.arch}, batch {a.batch}, lam {a.lam}, {a.steps} steps x {a.reps} reps, {a.threads} threads, load avg {load:.1f} '
          f'on {os.cpu_count()} CPUs')
    # the wall-clock ratio is what a user sees; images per CPU second is far less sensitive to other processes
    for i, what in ((0, 'wall clock'), (1, 'per CPU second')):
        ms, mp = statistics.median(x[i] for x in suite), statistics.median(x[i] for x in plain)
        print(f'median ({what}): suite loop {ms:.1f} img/s, plain loop {mp:.1f} img/s, ratio {ms / mp:.3f} '
              f'(suite overhead {100 * (mp / ms - 1):+.1f}%; goal <= 10%)')
    return suite, plain


if __name__ == '__main__':
    main()

"""GPU check of the paper profiles: ICKD (resnet32x4 teacher -> resnet8x4 student, CIFAR-100 shapes) and CLEL (base EBM,
ResNet-18 SimCLR encoder, 60 SGLD steps, CIFAR-10 shapes), in fp32 and with bf16 autocast + channels_last.

For each workload and precision it times full training iterations (the suite's own step functions, backward, optimiser
steps, EMA) on random CIFAR-shaped batches and reports iterations/s, peak device memory, the bf16/fp32 speed ratio,
a loss-agreement check (the same weights and the same inputs give the same loss in both precisions, within a relative
tolerance) and the extrapolated wall time of a full paper run (ICKD: 240 + 240 epochs of 50 000 images; CLEL: 100k
iterations). Never needed by CI.

    python benchmarks/gpu_check.py                      # CUDA, paper sizes (a few minutes on one GPU)
    python benchmarks/gpu_check.py --device cpu --iters 1 --warmup 0 --batch 4 --sgld-steps 2   # a CPU smoke test
    python benchmarks/gpu_check.py --device cpu --iters 1 --warmup 0 --batch 4 --sgld-steps 2 --small   # in seconds
    python benchmarks/gpu_check.py --out gpu_check.json # also write the results as JSON
"""
import argparse, contextlib, copy, json, math, sys, time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package
from contrastive_ablations.methods.clel.spec import CLEL
from contrastive_ablations.methods.ickd.spec import ICKD
from contrastive_ablations.methods.clel import train as clel
from contrastive_ablations.methods.ickd import distill as ickd
from contrastive_ablations.foundation.networks import create_model


# --small: the same code paths with small networks (a CPU check of the script in seconds; its timings are not the paper's)
SMALL_ICKD = dict(teacher_arch='resnet20', student_arch='resnet20')
SMALL_CLEL = dict(ebm_arch='small', encoder_arch='small', ebm_widths=(8, 16), ebm_head_hidden=16, ebm_proj_hidden=16, latent_dim=16)


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def _autocast(device, bf16: bool):
    # not core.autocast: that refuses bf16 where the device has no native bfloat16, and this check forces it on purpose
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _reset_peak(device):
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else float('nan')


def _timed(step, iters: int, warmup: int, device) -> float:
    "Seconds per iteration of `step(i)` (1-based i), after `warmup` untimed iterations."
    for i in range(1, warmup + 1): step(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(warmup + 1, warmup + iters + 1): step(i)
    _sync(device)
    return (time.perf_counter() - t) / iters


def _batches(n: int, batch: int, n_classes: int, device, channels_last: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
        out.append((x.contiguous(memory_format=torch.channels_last) if channels_last else x,
                    torch.randint(0, n_classes, (batch,), generator=g).to(device)))
    return out


def _ickd_setup(device, a):
    "Checked paper-profile ICKD parameters and recipe (batch size overridden for the CPU smoke test), seed 0."
    p = ICKD.validate({'profile': 'paper', 'dataset': 'cifar100', 'device': str(device)})
    cfg = ickd.profile_config('paper', 'cifar100')
    if a.batch: cfg = replace(cfg, batch_size=a.batch)
    if a.small: cfg = replace(cfg, **SMALL_ICKD)
    torch.manual_seed(0)
    return p, cfg


def _clel_setup(device, a, sgld_steps=None):
    "Checked paper-profile CLEL parameters and recipe (batch size, SGLD steps overridden for the CPU smoke test), seed 0."
    p = CLEL.validate({'profile': 'paper', 'dataset': 'cifar10', 'device': str(device)})
    cfg = clel.profile_config('paper', 'cifar10')
    over = {k: v for k, v in (('batch_size', a.batch), ('sgld_steps', sgld_steps)) if v}
    cfg = replace(cfg, **over, **(SMALL_CLEL if a.small else {}))
    torch.manual_seed(0)
    return p, cfg


def ickd_check(device, bf16: bool, a) -> dict:
    "Teacher (CE + gated intra-class loss) and student (KD) iterations of the ICKD paper profile."
    p, cfg = _ickd_setup(device, a)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    teacher = create_model(cfg.teacher_arch, n_classes=100, in_channels=3).to(device, memory_format=fmt)
    student = create_model(cfg.student_arch, n_classes=100, in_channels=3).to(device, memory_format=fmt)
    crit = ickd.make_criterion(teacher, 100, p)
    data = _batches(4, cfg.batch_size, 100, device, bf16)
    res = {}
    for role in ('teacher', 'student'):
        model = teacher if role == 'teacher' else student
        params = list(model.parameters()) + (list(crit.parameters()) if role == 'teacher' else [])
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(0)
        fn = (ickd.teacher_step_fn(teacher, crit, cfg, p, g) if role == 'teacher'
              else ickd.student_step_fn(student, copy.deepcopy(teacher), cfg, p, g))
        model.train()
        last = []
        def step(i, fn=fn, opt=opt, last=last):
            x, y = data[i % len(data)]
            with _autocast(device, bf16): out = fn(x, y, i)
            opt.zero_grad(set_to_none=True); out['loss'].backward(); opt.step()
            last[:] = [out['loss'].detach()]
        _reset_peak(device)
        s = _timed(step, a.iters, a.warmup, device)
        steps_per_epoch = 50_000 // cfg.batch_size
        epochs = cfg.teacher_epochs if role == 'teacher' else cfg.student_epochs
        res[role] = dict(it_per_s=1 / s, peak_gib=_peak_gib(device), full_run_h=s * steps_per_epoch * epochs / 3600,
                         last_loss_finite=bool(torch.isfinite(last[0])))
    return res


def ickd_loss_agreement(device, a) -> float:
    "Relative difference of the teacher loss (same weights, batch and augmentation draws) between fp32 and bf16."
    p, cfg = _ickd_setup(device, a)
    model = create_model(cfg.teacher_arch, n_classes=100, in_channels=3).to(device).eval()   # eval: fixed BN statistics
    crit = ickd.make_criterion(model, 100, p)
    x, y = _batches(1, cfg.batch_size, 100, device, False)[0]
    losses = []
    for bf16 in (False, True):
        fn = ickd.teacher_step_fn(model, copy.deepcopy(crit), cfg, p, torch.Generator().manual_seed(0))
        with torch.no_grad(), _autocast(device, bf16): losses.append(float(fn(x, y, 1)['loss']))
    return abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)


def clel_check(device, bf16: bool, a) -> dict:
    "One CLEL paper-profile iteration: SGLD (60 steps), EBM + SimCLR losses, one backward, both optimisers, EMA."
    p, cfg = _clel_setup(device, a, a.sgld_steps)
    tr = clel.build_trainer(p, cfg, device, torch.Generator().manual_seed(0))
    if bf16: tr.model.to(memory_format=torch.channels_last)
    data = _batches(4, cfg.batch_size, 10, device, bf16)
    last = []
    def step(i):
        x, y = data[i % len(data)]
        with _autocast(device, bf16): out = tr.step_fn(x, y, i)
        last[:] = [out['loss'].detach()]
        for o in tr.optimizers: o.zero_grad(set_to_none=True)
        out['loss'].backward()
        for o in tr.optimizers: o.step()
        for s in tr.schedulers: s.step()
        tr.after_step(i)
    _reset_peak(device)
    s = _timed(step, a.iters, a.warmup, device)
    return dict(it_per_s=1 / s, peak_gib=_peak_gib(device), full_run_h=s * 100_000 / 3600, sgld_steps=cfg.sgld_steps,
                batch_size=cfg.batch_size, last_loss_finite=bool(torch.isfinite(last[0])))


def clel_loss_agreement(device, a) -> float:
    "Relative difference of the CLEL loss (same weights, positives, negatives and views) between fp32 and bf16."
    p, cfg = _clel_setup(device, a)
    tr = clel.build_trainer(p, cfg, device, torch.Generator().manual_seed(0))
    m = tr.model.eval()   # eval: no power iteration and fixed BN statistics, so both passes see the same function
    x = _batches(4, cfg.batch_size, 10, device, False)
    xp, xn, v1, v2, vb = (b[0] for b in x + [x[0]])
    losses = []
    for bf16 in (False, True):
        with torch.no_grad(), _autocast(device, bf16): losses.append(float(m.losses(xp, xn, v1, v2, vb)['loss']))
    return abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--iters', type=int, default=20, help='timed iterations per workload and precision')
    ap.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    ap.add_argument('--batch', type=int, default=None, help='override the batch size (CPU smoke test)')
    ap.add_argument('--sgld-steps', type=int, default=None, help='override CLEL SGLD steps (CPU smoke test)')
    ap.add_argument('--tolerance', type=float, default=0.05, help='largest relative fp32/bf16 loss difference accepted')
    ap.add_argument('--only', choices=('ickd', 'clel'), default=None)
    ap.add_argument('--small', action='store_true', help="small networks (CPU check of the script; timings are not the paper's)")
    ap.add_argument('--out', default=None, help='write the results as JSON here')
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available(): raise SystemExit('CUDA is not available; use --device cpu for the smoke test')
        torch.backends.cudnn.benchmark = True
    report = dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu', iters=a.iters,
                  warmup=a.warmup, torch=torch.__version__, small_networks=a.small)
    if a.small: print('small networks (--small): the timings below are not those of the paper networks')
    for name, run, agree in (('ickd', ickd_check, ickd_loss_agreement), ('clel', clel_check, clel_loss_agreement)):
        if a.only and a.only != name: continue
        r = {prec: run(device, prec == 'bf16', a) for prec in ('fp32', 'bf16')}
        rel = agree(device, a)
        r['loss_rel_diff'], r['loss_agrees'] = rel, rel <= a.tolerance
        report[name] = r
        for prec in ('fp32', 'bf16'):
            rows = r[prec].items() if name == 'ickd' else [('iteration', r[prec])]
            for role, v in rows:
                print(f"{name:4} {role:9} {prec}: {v['it_per_s']:8.2f} it/s  peak {v['peak_gib']:6.2f} GiB  "
                      f"full paper run ≈ {v['full_run_h']:7.1f} h  loss finite: {v['last_loss_finite']}")
        pairs = r['fp32'].keys() if name == 'ickd' else [None]
        for role in pairs:
            f, b = (r['fp32'][role], r['bf16'][role]) if role else (r['fp32'], r['bf16'])
            print(f"{name:4} {role or 'iteration':9} bf16/fp32 speed ratio {b['it_per_s'] / f['it_per_s']:.2f}")
        print(f"{name:4} loss agreement fp32 vs bf16: relative difference {rel:.2e} "
              f"({'ok' if r['loss_agrees'] else 'ABOVE'} tolerance {a.tolerance})")
    if a.out: Path(a.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == '__main__':
    main()

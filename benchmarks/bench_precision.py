"""fp32 vs bf16 (`core.autocast`) side by side in one process: speed of the suite's hot steps, and agreement of results.

Speed, interleaved rounds (fp32, bf16, fp32, bf16, ...) so that load changes hit both alike; median s/step:
  ickd_teacher  quick ICKD teacher step (cnn_teacher, two views x 128): forward, backward, SGD, through training.fit
  sgld_small    quick small-EBM SGLD step (batch 64, 1x28x28)
  sgld_base     paper base-EBM SGLD step (batch 16, 3x32x32)
Agreement (each compared with the spread that the method's own randomness gives at fp32):
  energies      E(x) of the same EBM on the same images, bf16 vs fp32 (relative difference)
  chains        the same SGLD chains (same start, same noise) after the profile's SGLD steps, bf16 vs fp32,
                beside two fp32 chains that differ only in their noise seed (mean |Δpixel|)
  ickd          teacher and student top-1 after a short training, at several seeds, per precision
  clel          FID and mean OOD AUROC of short CLEL runs, at several seeds, per precision

    python benchmarks/bench_precision.py                  # all of it (a few minutes on 2 cores)
    python benchmarks/bench_precision.py --smoke          # the same code on tiny sizes (seconds; CI)
    python benchmarks/bench_precision.py --only speed     # speed only
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package
from contrastive_ablations.foundation.core import autocast, get_device
from contrastive_ablations.foundation.experiments import DATASETS
from contrastive_ablations.methods.clel.train import _resolve, build_clel
from contrastive_ablations.methods.clel.sampler import sgld
from contrastive_ablations.foundation.training import frozen
from contrastive_ablations.methods.ickd import distill as ickd
from contrastive_ablations.methods.clel import train as clel
from contrastive_ablations.foundation.training import fit

PRECS = ('fp32', 'bf16')


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def teacher_case(device, batch):
    "A timed function n -> s/step of the quick ICKD teacher step at a precision."
    p = ickd.ICKD.validate({'profile': 'quick'})
    cfg = ickd.resolve_config(p)
    model = ickd.create_model(cfg.teacher_arch, n_classes=10, in_channels=1).to(device)
    crit = ickd.make_criterion(model, 10, p)
    opt = torch.optim.SGD(list(model.parameters()) + list(crit.parameters()), lr=0.01, momentum=0.9)
    step = ickd.teacher_step_fn(model, crit, cfg, p, torch.Generator().manual_seed(0))
    x, y = torch.rand(batch, 1, 28, 28, device=device), torch.arange(batch, device=device) % 10

    def run(prec, n):
        _sync(device); t = time.perf_counter()
        res = fit(step, [(x, y)], 1, [opt], steps_per_epoch=n, progress=False, precision=prec)
        _sync(device); assert res.status == 'ok', res.message
        return (time.perf_counter() - t) / n
    return run


def ebm_of(profile, device, **over):
    "The EBM of a profile (framework 'none': no encoder is needed for SGLD) and its config."
    dataset = 'cifar10' if profile == 'paper' else 'fashion_mnist'
    _, cfg = _resolve({'profile': profile, 'dataset': dataset, 'framework': 'none', **over})
    torch.manual_seed(0)
    return build_clel('none', True, 0.0, cfg, DATASETS[dataset]).ebm.to(device), cfg


def sgld_case(profile, device, batch):
    "A timed function n -> s/step of SGLD on a profile's EBM at a precision."
    ebm, cfg = ebm_of(profile, device)
    info = DATASETS[cfg.dataset]
    x0 = torch.rand(batch, info.channels, info.size, info.size, generator=torch.Generator().manual_seed(0)).to(device)

    def run(prec, n):
        g = torch.Generator().manual_seed(1)
        _sync(device); t = time.perf_counter()
        with frozen(ebm), autocast(prec, device):
            sgld(ebm.marginal_energy, x0, n, cfg.sgld_step_size, cfg.sgld_noise, None, (0.0, 1.0), g)
        _sync(device); return (time.perf_counter() - t) / n
    return run


def speed(device, rounds, steps, smoke):
    "Median s/step per case and precision, interleaved; the ratio fp32/bf16 (> 1: bf16 faster)."
    cases = {'ickd_teacher': teacher_case(device, 16 if smoke else 128),
             'sgld_small': sgld_case('quick', device, 8 if smoke else 64),
             'sgld_base': sgld_case('paper', device, 2 if smoke else 16)}
    out = {}
    for name, run in cases.items():
        for prec in PRECS: run(prec, 1)   # warm-up: first-call allocations and oneDNN kernel selection
        t = {prec: [] for prec in PRECS}
        for _ in range(rounds):
            for prec in PRECS: t[prec].append(run(prec, steps))
        med = {prec: statistics.median(v) for prec, v in t.items()}
        out[name] = dict(fp32_s=round(med['fp32'], 5), bf16_s=round(med['bf16'], 5),
                         speedup=round(med['fp32'] / med['bf16'], 3), rounds=rounds, steps_per_round=steps)
        print(f"{name:13s} fp32 {med['fp32'] * 1e3:8.1f} ms  bf16 {med['bf16'] * 1e3:8.1f} ms  fp32/bf16 {out[name]['speedup']:.2f}", flush=True)
    return out


def energies_and_chains(device, smoke):
    "Energy and SGLD-chain differences bf16 vs fp32, beside the difference two fp32 noise seeds make."
    out = {}
    for profile, batch in (('quick', 8 if smoke else 64), ('paper', 2 if smoke else 16)):
        ebm, cfg = ebm_of(profile, device, **({'sgld_steps': 3} if smoke else {}))
        info = DATASETS[cfg.dataset]
        x0 = torch.rand(batch, info.channels, info.size, info.size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            e32 = ebm.marginal_energy(x0).float()
            with autocast('bf16', device): e16 = ebm.marginal_energy(x0).float()

        def chain(prec, seed):
            with frozen(ebm), autocast(prec, device):
                return sgld(ebm.marginal_energy, x0, cfg.sgld_steps, cfg.sgld_step_size, cfg.sgld_noise, None,
                            (0.0, 1.0), torch.Generator().manual_seed(seed))
        a, b, c = chain('fp32', 1), chain('bf16', 1), chain('fp32', 2)
        with torch.no_grad(): ea, eb = ebm.marginal_energy(a).mean().item(), ebm.marginal_energy(b).mean().item()
        out[f'{profile}_{cfg.ebm_arch}_ebm'] = dict(
            energy_rel_diff=float(((e16 - e32).abs() / e32.abs().clamp(min=1e-12)).median()),
            sgld_steps=cfg.sgld_steps, chain_bf16_vs_fp32=float((a - b).abs().mean()),
            chain_fp32_other_noise=float((a - c).abs().mean()), end_energy_fp32=ea, end_energy_bf16=eb)
        print(f"{profile} {cfg.ebm_arch} EBM: E(x) rel. diff {out[f'{profile}_{cfg.ebm_arch}_ebm']['energy_rel_diff']:.2e}; "
              f"chains after {cfg.sgld_steps} steps: bf16 vs fp32 mean |Δx| {float((a - b).abs().mean()):.2e}, "
              f"other noise seed {float((a - c).abs().mean()):.2e}; end energy {ea:.4g} vs {eb:.4g}", flush=True)
    return out


def _spread(vals: dict) -> dict:
    "Mean and sample sd over seeds per precision, the difference of the means and the seeds' standard error."
    m = {p: float(np.mean(v)) for p, v in vals.items()}
    sd = {p: float(np.std(v, ddof=1)) if len(v) > 1 else float('nan') for p, v in vals.items()}
    se = float(np.sqrt(sum(sd[p] ** 2 / len(vals[p]) for p in vals)))
    return dict(values=vals, mean=m, sd=sd, diff=m['bf16'] - m['fp32'], se_of_diff=se,
                within_2se=bool(abs(m['bf16'] - m['fp32']) <= 2 * se) if np.isfinite(se) else None)


def runs_agreement(seeds, smoke):
    "ICKD top-1 and CLEL FID / AUROC of short runs per precision and seed; wall time per precision."
    ik = dict(profile='smoke') if smoke else dict(profile='quick', teacher_epochs=1, student_epochs=1, n_train=8192)
    cl = dict(profile='smoke') if smoke else dict(profile='smoke', iterations=60)
    vals = {k: {p: [] for p in PRECS} for k in ('teacher_top1', 'student_top1', 'ickd_wall_s', 'fid', 'auroc_mean', 'clel_wall_s')}
    for seed in range(seeds):
        for prec in (PRECS if seed % 2 == 0 else PRECS[::-1]):   # alternate who goes first (caches, load)
            m, _, _ = ickd.run_experiment(progress=False, seed=seed, precision=prec, **ik)
            for k in ('teacher_top1', 'student_top1'): vals[k][prec].append(m[k])
            vals['ickd_wall_s'][prec].append(m['wall_time_s'])
            m, _, _ = clel.run_experiment(seed=seed, precision=prec, **cl)
            for k in ('fid', 'auroc_mean'): vals[k][prec].append(m[k])
            vals['clel_wall_s'][prec].append(m['wall_time_s'])
    out = {k: _spread(v) for k, v in vals.items()}
    for k, r in out.items():
        print(f"{k:13s} fp32 {r['mean']['fp32']:.4g} ± {r['sd']['fp32']:.2g}  bf16 {r['mean']['bf16']:.4g} ± {r['sd']['bf16']:.2g}"
              f"  diff {r['diff']:+.3g} (2 se = {2 * r['se_of_diff']:.2g})", flush=True)
    out['recipes'] = dict(ickd=ik, clel=cl, seeds=seeds)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--smoke', action='store_true', help='tiny sizes: checks the code path in seconds')
    ap.add_argument('--only', choices=('speed', 'agreement'), default=None)
    ap.add_argument('--rounds', type=int, default=None, help='interleaved rounds per case (default 5; smoke 2)')
    ap.add_argument('--steps', type=int, default=None, help='steps per round (default 5; smoke 1)')
    ap.add_argument('--seeds', type=int, default=None, help='seeds per precision for the run agreement (default 3; smoke 1)')
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: leave as is)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--out', default=None, help='write the results as JSON here')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = get_device(a.device)
    autocast('bf16', device)   # refuses a device without bfloat16 support before any work
    res = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
               load_avg=os.getloadavg() if hasattr(os, 'getloadavg') else None)
    print(f"device {device}, {res['threads']} thread(s), torch {torch.__version__}, load average {res['load_avg']}", flush=True)
    if a.only in (None, 'speed'):
        res['speed'] = speed(device, a.rounds or (2 if a.smoke else 5), a.steps or (1 if a.smoke else 5), a.smoke)
    if a.only in (None, 'agreement'):
        res['sgld'] = energies_and_chains(device, a.smoke)
        res['runs'] = runs_agreement(a.seeds or (1 if a.smoke else 3), a.smoke)
    res['load_avg_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1, default=str) + '\n')
    return res


if __name__ == '__main__':
    main()

"""Threads per worker, measured: on this machine's cores, do more runs at once with fewer threads each finish more
work than fewer runs with more threads? The suite's hot steps, each in its own process (as sweep workers are):

  ickd_teacher  quick ICKD teacher step (cnn_teacher, two views x 128), through training.fit
  sgld_small    quick small-EBM SGLD step (batch 64, 1x28x28)

For W workers x T threads (W * T = the cores), W processes run the step at the same time with T threads each;
throughput = W / (median seconds per step). Configurations alternate in rounds, so that load changes hit all
alike. The sweep's default (`sweep.default_workers`: one single-threaded worker per core) follows the winner.

    python benchmarks/bench_workers.py            # a minute or two on 2 cores
    python benchmarks/bench_workers.py --smoke    # seconds (CI)
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))


def child(case: str, steps: int) -> float:
    "Median seconds per step of `case` in this process (threads from OMP_NUM_THREADS)."
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from bench_precision import teacher_case, ebm_of
    from contrastive_ablations.foundation.core import autocast, resolve_precision
    from contrastive_ablations.methods.clel.sampler import sgld
    from contrastive_ablations.foundation.training import frozen
    device = torch.device('cpu')
    prec = resolve_precision('auto', device)   # the arithmetic a quick run uses here
    if case == 'ickd_teacher':
        run = teacher_case(device, 128)
        run(prec, 2)
        return statistics.median(run(prec, 1) for _ in range(steps))
    ebm, cfg = ebm_of('quick', device)
    x = torch.rand(64, 1, 28, 28)
    times = []
    with frozen(ebm), autocast(prec, device):
        for _ in range(steps + 1):
            t = time.perf_counter(); sgld(ebm.marginal_energy, x, 1, cfg.sgld_step_size, cfg.sgld_noise); times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def measure(case: str, workers: int, threads: int, steps: int) -> float:
    "Steps per second of `workers` concurrent processes with `threads` threads each."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(HERE.parent))
    procs = [subprocess.Popen([sys.executable, str(HERE), '--child', case, '--steps', str(steps)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    secs = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return workers / statistics.median(secs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--smoke', action='store_true', help='few steps, one round')
    ap.add_argument('--cores', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--child'); ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--json', help='also write the results here')
    a = ap.parse_args(argv)
    if a.child: print(child(a.child, a.steps)); return
    steps, rounds = (2, 1) if a.smoke else (a.steps, a.rounds)
    configs = [(w, a.cores // w) for w in range(1, a.cores + 1) if a.cores % w == 0]
    res = {}
    for case in ('ickd_teacher', 'sgld_small'):
        got = {c: [] for c in configs}
        for _ in range(rounds):
            for w, t in configs: got[(w, t)].append(measure(case, w, t, steps))
        res[case] = {f'{w}x{t}': statistics.median(v) for (w, t), v in got.items()}
        best = max(res[case], key=res[case].get)
        line = '  '.join(f'{k} workers x threads: {v:6.2f} steps/s' for k, v in res[case].items())
        print(f'{case:13s} {line}   best {best}; ' + ', '.join(f'{k}/{best} = {v / res[case][best]:.2f}' for k, v in res[case].items() if k != best))
    if a.json: Path(a.json).write_text(json.dumps(dict(cores=a.cores, steps=steps, rounds=rounds, steps_per_s=res), indent=2))
    return res


if __name__ == '__main__': main()

"""Where a sweep's time goes: per experiment and phase, from the run folders it wrote; two folders side by side.

For every finished run (a run folder with run_info.json and run.ipynb) the phases are those of
`sweep.run_phases`: kernel start, imports, data, training, evaluation, FID/AUROC, other run work, figures,
writing and papermill. Runs written before runs recorded `timings.json` show their whole `run(params)` cell
as 'other run work'. With two folders (e.g. before and after a change, same plans and profile) it prints the
mean seconds per run of each phase in both and their ratio.

    python benchmarks/time_profile.py runs/smoke
    python benchmarks/time_profile.py runs_before runs_after [--json out.json]
"""
import argparse, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package
from contrastive_ablations.foundation.core import read_json
from contrastive_ablations.foundation.experiments import EXPERIMENTS
from contrastive_ablations.engine.timing import PHASES, run_phases


def _experiment(params: dict) -> str:
    "The experiment whose knobs hold every name of `params`."
    return next((n for n, e in EXPERIMENTS.items() if set(params) <= set(e.knobs)), '?')


def profile(runs_dir) -> dict:
    "experiment -> dict(n=runs, notebook_s=total, phases=mean seconds per run of each phase)."
    acc = {}
    for info_path in sorted(Path(runs_dir).glob('*/*/run_info.json')):
        d = info_path.parent
        if d.is_symlink(): continue   # a run shared with another study: counted once, where it ran
        info = read_json(info_path)
        if info.get('status') != 'done' or not info.get('notebook_wall_s'): continue
        exp = _experiment(read_json(d/'params.json'))
        ph = run_phases(d, info['notebook_wall_s'])
        a = acc.setdefault(exp, dict(n=0, notebook_s=0.0, sums={}))
        a['n'] += 1; a['notebook_s'] += info['notebook_wall_s']
        for k, v in ph.items(): a['sums'][k] = a['sums'].get(k, 0.0) + v
    return {e: dict(n=a['n'], notebook_s=round(a['notebook_s'], 2),
                    phases={k: round(a['sums'][k] / a['n'], 3) for k in PHASES if k in a['sums']}) for e, a in sorted(acc.items())}


def table(profiles: list, names: list) -> str:
    "Mean seconds per run of each phase per experiment, one column per folder (and their ratio for two)."
    lines = []
    for exp in sorted({e for p in profiles for e in p}):
        cols = [p.get(exp, dict(n=0, notebook_s=0.0, phases={})) for p in profiles]
        lines.append(f'{exp}: ' + ' | '.join(f"{nm}: {c['n']} runs, {c['notebook_s']:.0f} s in notebooks "
                                            f"({c['notebook_s'] / max(c['n'], 1):.1f} s per run)" for nm, c in zip(names, cols)))
        for k, label in PHASES.items():
            v = [c['phases'].get(k, 0.0) for c in cols]
            if max(v) < 0.05: continue
            ratio = f'  x{v[1] / v[0]:.2f}' if len(v) == 2 and v[0] > 0.05 else ''
            lines.append(f'  {label:15s}' + ''.join(f'{x:9.2f} s' for x in v) + ratio)
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('runs', nargs='+', help='one or two sweep output folders')
    ap.add_argument('--json', default=None, help='also write the profiles as JSON here')
    a = ap.parse_args(argv)
    profs = [profile(r) for r in a.runs]
    print('mean seconds per run' + (f" ({' vs '.join(a.runs)})" if len(a.runs) > 1 else ''))
    print(table(profs, a.runs))
    if a.json: Path(a.json).write_text(json.dumps(dict(zip(a.runs, profs)), indent=1) + '\n')
    return profs


if __name__ == '__main__':
    main()

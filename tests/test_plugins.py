"""Experiments are found through the entry-point group `contrastive_ablations.experiments`: a package installed
beside this one (here: a distribution on the path of each process, as `pip install` leaves one) adds an experiment
that the planner, the run kernels, the report and the site find without any registration in the process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / 'tests' / 'assets' / 'toy_experiment.ipynb'

SPEC = f'''"""A method shipped by another package: the toy template under the name 'plugged'."""
from contrastive_ablations.foundation.experiments import Experiment, Metric, Part
from toy_experiment import PARAMS as KNOBS   # the toy's knobs (tests/assets)

PLUGGED = Experiment('plugged', {str(TOY)!r}, 'a plugged-in toy', KNOBS,
                     metrics=(Metric('toy_top1', 'toy accuracy', '%', 0, 100, True, family='top1'),
                              Metric('wall_time_s', 'wall time', 's', 0, None, None)),
                     families={{'top1': 'toy accuracy'}}, metric_aliases={{'toy accuracy': 'top1'}},
                     parts=(Part(('the x knob',), 'plugged_x', 'x', 0.3),),
                     pairing='A seed sets the toy curve.')
'''


def install_plugin(site: Path, entry_points: str) -> dict:
    "A distribution `plugged-method` in `site` (its module and dist-info); the environment of a process that sees it."
    site.mkdir(parents=True, exist_ok=True)
    (site / 'plugged_method.py').write_text(SPEC)
    info = site / 'plugged_method-0.1.dist-info'
    info.mkdir(exist_ok=True)
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: plugged-method\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text(entry_points)
    path = [str(site), str(ROOT / 'tests' / 'assets'), str(ROOT), os.environ.get('PYTHONPATH', '')]
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(path).rstrip(os.pathsep)}


def py(env, code, **kw):
    return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


def test_an_installed_package_adds_an_experiment_every_process_finds(tmp_path):
    env = install_plugin(tmp_path / 'site', '[contrastive_ablations.experiments]\nplugged = plugged_method:PLUGGED\n')
    r = py(env, 'from contrastive_ablations.foundation.experiments import EXPERIMENTS, METRIC_ALIASES; '
                'print(sorted(EXPERIMENTS), METRIC_ALIASES["toy accuracy"])')
    assert r.returncode == 0 and r.stdout.split('\n')[0] == "['clel', 'ickd', 'plugged'] top1", r.stderr
    plan = tmp_path / 'plugged_x.yaml'
    plan.write_text('study: plugged_x\nnotebook: plugged\nparameter: x\nvalues: [0.1]\ncontrol: 0.3\nmetrics: [top1]\nseeds: 2\n')
    out = tmp_path / 'runs'
    # the planner and the sweep (its workers are other processes), then the report in a process of its own
    s = subprocess.run([sys.executable, '-m', 'contrastive_ablations', 'sweep', str(plan), '--profile', 'smoke',
                        '--workers', '1', '--out', str(out)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert s.returncode == 0, s.stdout + s.stderr
    rep = subprocess.run([sys.executable, '-m', 'contrastive_ablations', 'report', str(out)], env=env,
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert rep.returncode == 0 and 'plugged_x' in rep.stdout and 'toy accuracy' in rep.stdout, rep.stdout + rep.stderr
    st = py(env, f'from contrastive_ablations.engine.rundata import load_study; s = load_study({str(out / "plugged_x")!r}); '
                 'print(s.experiment.name, len(s.runs))')
    assert st.returncode == 0 and st.stdout.split() == ['plugged', '4'], st.stdout + st.stderr
    # without the package, the same runs are of an experiment nobody declares: the plan is refused by name
    bare = {**os.environ, 'PYTHONPATH': str(ROOT)}
    s = subprocess.run([sys.executable, '-m', 'contrastive_ablations', 'sweep', str(plan), '--profile', 'smoke', '--dry-run',
                        '--out', str(out)], env=bare, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert s.returncode != 0 and "'plugged' is not a registered experiment notebook" in s.stderr, s.stdout + s.stderr


@pytest.mark.parametrize('entry, why', [('plugged = plugged_method:MISSING', 'could not be loaded'),
                                        ('plugged = plugged_method:KNOBS', 'not an experiments.Experiment'),
                                        ('other = plugged_method:PLUGGED', "names the experiment 'plugged'"),
                                        ('ickd = plugged_method:PLUGGED', "names the experiment 'plugged'")])
def test_a_broken_plugin_is_reported_and_left_out(tmp_path, entry, why):
    env = install_plugin(tmp_path / 'site', f'[contrastive_ablations.experiments]\n{entry}\n')
    r = py(env, 'from contrastive_ablations.foundation.experiments import EXPERIMENTS; print(sorted(EXPERIMENTS))')
    assert r.returncode == 0 and r.stdout.strip() == "['clel', 'ickd']", r.stdout + r.stderr
    assert why in r.stderr, r.stderr

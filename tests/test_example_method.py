"""The example method (examples/label_smoothing), installed as a package of its own, goes from plan to results page
with no file of this package naming it: found through its entry point, dry-run, swept, reported with intervals and
paired tests, and on the site with its lesson in the sidebar. (Through the Slurm executor: test_slurm.)"""
import json
import subprocess
import sys

import pytest

from fixtures import EXAMPLE, ROOT, install_example


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "The example installed into a folder of its own; (environment, plan file)."
    site = tmp_path_factory.mktemp('example') / 'site'
    env = install_example(site)
    return env, site / 'label_smoothing' / 'plans' / 'label_smoothing.yaml'


def suite(env, *args, timeout=900):
    r = subprocess.run([sys.executable, '-m', 'contrastive_ablations', *map(str, args)], env=env, capture_output=True,
                       text=True, cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def test_no_file_of_this_package_names_the_example():
    names = ('label_smoothing', 'label smoothing', 'LABEL_SMOOTHING')
    files = [p for p in (ROOT / 'contrastive_ablations').rglob('*.py')] + [ROOT / 'setup.py', ROOT / 'settings.ini', ROOT / 'nbs' / '_quarto.yml']
    files += [p for p in (ROOT / 'plans').glob('*')] + [p for p in (ROOT / 'nbs').rglob('*.ipynb') if p.name != '90_add_a_method.ipynb']
    assert [str(p) for p in files if any(n in p.read_text(encoding='utf-8') for n in names)] == []


def test_the_installed_package_is_found_and_its_template_matches_its_spec(installed):
    env, _ = installed
    code = ('from contrastive_ablations.foundation.experiments import EXPERIMENTS, template_problems; '
            'e = EXPERIMENTS["label_smoothing"]; print(sorted(EXPERIMENTS), template_problems(e), [p.name for p in e.lesson_paths()])')
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "['clel', 'ickd', 'label_smoothing'] [] ['lesson.ipynb']", r.stdout + r.stderr


def test_plan_to_results_page(installed, tmp_path):
    env, plan = installed
    runs = tmp_path / 'runs'
    out = suite(env, 'sweep', plan, '--profile', 'smoke', '--seeds', '2', '--out', runs, '--dry-run')
    assert '8 runs: 0 done, 0 failed, 8 to do' in out, out
    suite(env, 'sweep', plan, '--profile', 'smoke', '--seeds', '2', '--workers', '2', '--out', runs)
    for d in sorted((runs / 'label_smoothing').glob('*_seed=*')):
        m = json.loads((d / 'metrics.json').read_text())
        assert m['status'] == 'ok' and 0 <= m['top1'] <= 100 and 0 <= m['ece'] <= 100 and m['nll'] > 0, (d, m)
    rep = suite(env, 'report', runs)
    assert 'label_smoothing' in rep and 'expected calibration error' in rep and 'paired t' in rep, rep
    # the site: a results page made from the plan and the spec, the method's lesson under its title in the sidebar
    site = tmp_path / 'site'
    suite(env, 'site', '--runs', runs, '--out', site, '--cache', tmp_path / 'site_cache', '--lessons', 'lesson.ipynb', '--workers', '2')
    page = (site / 'results' / 'label_smoothing.html').read_text(encoding='utf-8')
    assert 'Label smoothing' in page and 'epsilon' in page and 'detectable' in page, page[:2000]
    lesson = (site / 'methods' / 'label_smoothing' / 'lesson.html').read_text(encoding='utf-8')
    assert 'ECE = 40.0 %' in lesson   # the lesson ran, with the package installed in its kernel
    index = (site / 'index.html').read_text(encoding='utf-8')
    assert 'methods/label_smoothing/lesson.html' in index and 'results/label_smoothing.html' in index
    assert 'Label smoothing of a Fashion-MNIST classifier' in index

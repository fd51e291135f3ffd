"""The declarations of the experiments: planning, validating, dry-running and reporting never import torch; the
templates' parameters cells, the sweep's run identity and the plans are checked against the declarations."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from contrastive_ablations.engine import plans as P
from contrastive_ablations.foundation.core import ParameterError
from contrastive_ablations.methods.clel.spec import CLEL
from contrastive_ablations.foundation.experiments import EXPERIMENTS, check_injected, parameters_cell, template_problems
from contrastive_ablations.methods.ickd.spec import ICKD

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT/'tests'/'assets'


SEED_PLANS = ('clel_framework', 'clel_norm_direction', 'ickd_balance', 'ickd_margin')   # the studies the suite ships


def test_planning_validating_dry_running_and_reporting_leave_torch_out(tmp_path):
    "Load and validate the shipped seed plans and the markdown seeds, dry-run a sweep, import the report: no torch."
    code = textwrap.dedent(f'''
        import sys
        from pathlib import Path
        from contrastive_ablations.engine import plans
        from contrastive_ablations.engine import sweep
        from contrastive_ablations.engine import report
        from contrastive_ablations.foundation import experiments
        root = Path({str(ROOT)!r})
        ymls = [root/'plans'/f'{{s}}.yaml' for s in {SEED_PLANS!r}]
        seeds = sorted((root/'tests'/'assets'/'seeds').glob('*.txt'))
        assert all(y.is_file() for y in ymls) and len(seeds) == 2
        loaded = plans.load_plans(ymls, profile='smoke') + plans.load_plans(seeds, profile='quick')
        assert len(loaded) == 8
        rc = sweep.cli_sweep([*map(str, ymls), '--profile', 'smoke', '--dry-run', '--out', {str(tmp_path / 'runs')!r}])
        assert rc == 0, rc
        print('torch' in sys.modules)
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == 'False', r.stdout[-2000:]


def _template_without(tmp_path, name: str, knob: str) -> Path:
    "A copy of a template whose parameters cell lost the line of `knob`."
    nb = nbformat.read(ROOT/'ablation_nbs'/f'{name}.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    lines = cell.source.splitlines()
    cell.source = '\n'.join(l for l in lines if not l.startswith((f'{knob} ', f'{knob}:')))
    assert len(cell.source.splitlines()) == len(lines) - 1
    path = tmp_path/f'{name}.ipynb'
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize('exp', [ICKD, CLEL], ids=lambda e: e.name)
def test_templates_declare_every_knob(exp, tmp_path):
    "Each template's parameters cell lists exactly the declared knobs with their defaults; a missing knob is caught."
    assert template_problems(exp) == []
    knob = list(exp.knobs)[5]
    problems = template_problems(exp, _template_without(tmp_path, exp.name, knob))
    assert problems == [f"{tmp_path/(exp.name + '.ipynb')}: knob {knob!r} is missing from the parameters cell"]
    assert parameters_cell(exp).count('\n') == len(exp.knobs)   # one line a knob, under a comment line


def _plan(tmp_path, text: str, name='p.yaml') -> Path:
    (tmp_path/name).write_text(textwrap.dedent(text)); return tmp_path/name


def test_plan_value_outside_a_knobs_domain_is_caught(tmp_path):
    "δ outside [0, 1] is refused with the file and the field under the prob gate, and accepted under the logit gate."
    base = textwrap.dedent('''
        study: margin_logit
        notebook: ickd
        parameter: delta
        values: [0.5, 2.0, 5.0]
        control: 0.5
        metrics: [top1]
    ''')
    with pytest.raises(P.PlanError, match=r"p.yaml: field 'values\[1\]': parameter 'delta' = 2.0 is out of range"):
        P.load_plans(_plan(tmp_path, base))
    plan, = P.load_plans(_plan(tmp_path, base + "fixed: {gate: logit}\n"))
    assert plan.values == [0.5, 2.0, 5.0]


def test_every_knob_is_identity_or_refused_as_ablation(tmp_path):
    "The sweep's run identity leaves out exactly the knobs declared as not part of it; ablating one is refused."
    from contrastive_ablations.foundation.core import run_identity
    for exp in (ICKD, CLEL):   # where (out_dir) and on what (device) a run executes: so it was when run ids were first made
        assert set(exp.knobs) - set(run_identity(exp.knobs, exp.validate({}))) == {'out_dir', 'device'}, exp.name
    f = _plan(tmp_path, '''
        study: devices
        notebook: clel
        parameter: device
        values: [cpu, cuda]
        control: cpu
        metrics: [fid]
    ''')
    with pytest.raises(P.PlanError, match=r"field 'parameter': 'device' cannot be ablated: it says where a run executes"):
        P.load_plans(f)


def test_ambiguous_part_lists_the_candidates(tmp_path):
    md = (ASSETS/'seeds'/'000_7c1674a754ff0711.txt').read_text(encoding='utf-8')
    old = '**Ablated Part**: margin threshold'
    assert old in md
    f = tmp_path/'plan.md'
    f.write_text(md.replace(old, '**Ablated Part**: balance parameter and margin threshold', 1), encoding='utf-8')
    with pytest.raises(P.PlanError) as e: P.load_plans(f)
    msg = str(e.value)
    assert 'Ablated Part' in msg and 'ambiguous' in msg and 'ickd.delta' in msg and 'ickd.lam' in msg


def test_check_injected_refuses_unknown_names_with_the_closest_knob():
    with pytest.raises(ParameterError, match=r"'detla' \(did you mean 'delta'\?\)"):
        check_injected({'detla': 0.5, 'json': json}, 'ickd', where='ablation_nbs/ickd.ipynb: ')
    assert check_injected({'delta': 0.5, 'gate': 'logit', 'P': P}, 'ickd')['delta'] == 0.5
    assert check_injected({'framework': 'byol'}, 'clel')['framework'] == 'byol'


def test_template_refuses_a_typo_before_any_work(tmp_path):
    "papermill only warns about an unknown parameter; the template stops on it, naming the closest knob."
    cmd = [sys.executable, '-m', 'papermill', str(ROOT/'ablation_nbs'/'ickd.ipynb'), str(tmp_path/'run.ipynb'),
           '-k', 'python3', '--no-progress-bar', '-p', 'profile', 'smoke', '-p', 'detla', '0.5',
           '-p', 'out_dir', str(tmp_path/'out')]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "'detla' (did you mean 'delta'?)" in out, out[-3000:]
    assert not (tmp_path/'out').exists()


def test_metrics_declare_what_plans_and_reports_need():
    for exp in EXPERIMENTS.values():
        names = [m.name for m in exp.metrics]
        assert len(names) == len(set(names)), exp.name
        for fam in exp.families: assert exp.metrics_of(fam), (exp.name, fam)
        for m in exp.metrics:
            assert m.lo is None or m.hi is None or m.lo < m.hi
            assert m.role in (None, 'teacher', 'student')
    assert ICKD.metric('student_top1').unit == '%' and ICKD.metric('student_top1').higher_is_better
    assert CLEL.metric('fid').higher_is_better is False and CLEL.metric('auroc_mnist').hi == 1
    with pytest.raises(ValueError, match="closest: .*fid"): CLEL.metric('fdi')


def test_seed_plans_are_named_and_a_user_plan_keeps_the_tests_green(tmp_path):
    "The seed plans are named, not counted: a user's own plan in plans/ changes nothing the tests check."
    assert {p.stem for p in (ROOT/'plans').glob('*.yaml')} >= set(SEED_PLANS)
    user = ROOT/'plans'/'zz_user_plan_written_by_a_test.yaml'
    assert not user.exists()
    text = (ROOT/'plans'/'ickd_margin.yaml').read_text(encoding='utf-8')
    user.write_text(text.replace('study: ickd_margin', 'study: zz_user_margin').replace('values: [0.1, 0.2, 0.3, 0.4, 0.5]', 'values: [5e-2, 0.6]'),
                    encoding='utf-8')
    try:
        test_planning_validating_dry_running_and_reporting_leave_torch_out(tmp_path)
        from test_sweep import test_markdown_and_yaml_plans_agree
        test_markdown_and_yaml_plans_agree()
        assert P.load_plans(user, profile='smoke')[0].values == [0.05, 0.6]   # and the user's plan itself loads
    finally:
        user.unlink()


# ---- a run's identity covers its recipe ---------------------------------------------------------

def test_recipe_defaults_read_without_import_match_the_dataclasses():
    "The recipe read from the dataclass source (no torch) is exactly the dataclass's defaults, for both experiments."
    from dataclasses import asdict
    from contrastive_ablations.methods.clel import train as clel
    from contrastive_ablations.methods.ickd import distill as ickd
    from contrastive_ablations.foundation.experiments import profile_recipe, recipe_defaults
    for exp, cls in ((ICKD, ickd.ICKDConfig), (CLEL, clel.CLELConfig)):
        assert json.loads(json.dumps(asdict(cls()))) == json.loads(json.dumps(recipe_defaults(exp)))
        for prof in exp.profiles:   # the profile's values win over the defaults
            r = profile_recipe(exp, prof)
            assert all(r[k] == json.loads(json.dumps(v)) for k, v in exp.profiles[prof].items())


def test_a_changed_profile_value_gives_new_run_ids(monkeypatch):
    "Changing one value of a profile changes the run ids of every run of that profile, and only of that profile."
    from contrastive_ablations.engine import sweep as S
    plans = P.load_plans(ROOT/'plans'/'ickd_margin.yaml', profile='smoke', seeds=1)
    ids = lambda profile: [r.run_id for r in S.expand_runs(plans, profile, 'runs')]
    smoke, quick = ids('smoke'), ids('quick')
    monkeypatch.setitem(ICKD.profiles, 'smoke', {**ICKD.profiles['smoke'], 'n_train': 2048})
    assert set(ids('smoke')).isdisjoint(smoke) and len(ids('smoke')) == len(smoke)
    assert ids('quick') == quick


def test_declared_architectures_are_the_networks():
    "teacher_arch/student_arch are checked against a declared list (no torch at planning time): it is exactly networks.MODELS."
    from contrastive_ablations.methods.ickd.spec import ARCHS
    from contrastive_ablations.foundation.networks import MODELS
    assert set(ARCHS) == set(MODELS)
    with pytest.raises(ParameterError, match="'teacher_arch' = 'resnet9000' is not a known value"):
        ICKD.validate({'teacher_arch': 'resnet9000'})


def test_a_template_run_alone_records_its_code_and_recipe(tmp_path):
    "write_run_outputs (the templates' last cell, also without a sweep) writes run_info.json: version, commit, dirty flag, libraries, recipe."
    from contrastive_ablations.engine import sweep as S
    from contrastive_ablations.foundation.core import write_run_outputs
    params = ICKD.validate({'profile': 'smoke', 'delta': 0.3, 'dataset': 'fashion_mnist'})
    write_run_outputs(tmp_path, params, {'status': 'ok', 'teacher_top1': 80.0}, experiment='ickd')
    info = json.loads((tmp_path/'run_info.json').read_text())
    assert info['package_version'] and {'commit', 'dirty'} <= set(info['git']) and info['libraries']['torch'] and info['libraries']['numpy']
    plan = P.load_plans(ROOT/'plans'/'ickd_margin.yaml', profile='smoke', seeds=1)
    assert info['recipe_hash'] == S.expand_runs(plan, 'smoke', tmp_path/'runs')[0].recipe   # the recipe a sweep names its folders by
    assert info['recipe']['teacher_epochs'] == ICKD.profiles['smoke']['teacher_epochs']

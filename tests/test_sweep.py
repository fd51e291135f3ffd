"""End-to-end tests of plan-driven papermill sweeps: real notebook executions, interruption and
resume, bad plans, a notebook that lost its `parameters` tag, the submitit executor, the lock."""
import contextlib, importlib.util, json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

from contrastive_ablations.engine import plans as P
from contrastive_ablations.engine import sweep as S
from contrastive_ablations.engine import execute as engine_execute, runs as engine_runs, timing as engine_timing

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT/'tests'/'assets'
PLANS = ASSETS/'plans'
RUN_FILES = ('run.ipynb', 'metrics.json', 'params.json', 'curves.csv', 'run.log', 'run_info.json')


def _load_toy():
    spec = importlib.util.spec_from_file_location('toy_experiment', ASSETS/'toy_experiment.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

TOY = _load_toy()


@pytest.fixture(autouse=True)
def registry():
    "Register the toy experiment for each test, and restore the registry afterwards."
    saved = dict(P.EXPERIMENTS)
    TOY.register()
    yield
    P.EXPERIMENTS.clear(); P.EXPERIMENTS.update(saved)


def _cli(*args, env_extra=None, **kw):
    "Run the CLI (with the toy registered) in a subprocess."
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])), **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(ASSETS/'toy_cli.py'), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def check_run_dir(run: engine_runs.RunSpec):
    "Every file of a finished run is there and says what the sweep asked for."
    d = Path(run.run_dir)
    for f in RUN_FILES: assert (d/f).exists(), f'{d}: missing {f}'
    assert not (d/'error.txt').exists()
    assert engine_runs.params_mismatch(run.params, json.loads((d/'params.json').read_text())) == []
    m = json.loads((d/'metrics.json').read_text())
    assert m['status'] in ('ok', 'diverged') and 'wall_time_s' in m
    nb = nbformat.read(d/'run.ipynb', as_version=4)
    injected = [c for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert len(injected) == 1 and f"seed = {run.seed}" in injected[0].source
    info = json.loads((d/'run_info.json').read_text())
    assert info['status'] == 'done' and info['notebook_wall_s'] >= info['experiment_wall_s'] >= 0
    assert S.run_state(run) == 'done'


def test_toy_sweep_two_workers_and_failures(tmp_path, capsys, monkeypatch):
    "A sweep on two workers: every run's files; a failing run keeps its notebook and error and fails the sweep; runs shared by two studies execute once; one GPU per worker."
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '3,5')   # pretend two GPUs (the toy does not use them)
    out = tmp_path/'runs'
    files = [PLANS/'toy_x.yaml', PLANS/'toy_fail.yaml', PLANS/'toy_mode.yaml']
    rc = S.cli_sweep([*files, '--profile', 'smoke', '--seeds', '1', '--workers', '2', '--out', out])
    text = capsys.readouterr().out
    print(text)
    assert rc == 1, 'a failed run must make the sweep exit non-zero'
    runs = S.expand_runs(P.load_plans(files, profile='smoke', seeds=1), 'smoke', out)
    assert len(runs) == 4 + 2 + 3   # toy_x: control + 2 values + 1 baseline; toy_fail: control + 1 value; toy_mode: 3
    assert '9 runs (0 finished before, 7 to run, 2 shared with another study)' in text
    bad = [r for r in runs if r.params.get('fail')]
    assert len(bad) == 1
    for r in runs:
        if r is not bad[0]: check_run_dir(r)
    d = Path(bad[0].run_dir)
    assert (d/'run.ipynb').exists() and 'failure requested' in (d/'error.txt').read_text()
    assert not (d/'metrics.json').exists() and S.run_state(bad[0]) == 'failed'
    assert f'FAILED toy_fail/{bad[0].run_id}: RuntimeError: toy experiment: failure requested' in text and 'error.txt' in text
    assert 'overhead:' in text and '% of notebook wall time was outside training' in text
    gpus = [json.loads((Path(r.run_dir)/'run_info.json').read_text())['cuda_visible_devices'] for r in runs]
    assert set(gpus) <= {'3', '5'} and len(set(gpus)) == 2, gpus   # each worker has its own GPU
    # shared runs: toy_mode's mode=b is toy_x's control (mode b fixed there), its mode=a is toy_fail's control
    shared = [r for r in runs if r.alias_of]
    assert [(r.study, r.label, Path(r.alias_of).parent.name) for r in shared] == [('toy_mode', 'mode=a', 'toy_fail'), ('toy_mode', 'mode=b', 'toy_x')]
    for r in shared: assert Path(r.run_dir).is_symlink() and Path(r.run_dir).resolve() == Path(r.alias_of).resolve()
    # manifest: plan, versions, machine and every run's state
    man = json.loads((out/'toy_x'/'manifest.json').read_text())
    assert man['profile'] == 'smoke' and man['plan']['parameter'] == 'x' and man['libraries']['papermill']
    assert man['machine']['cpus'] >= 1 and 'commit' in man['git'] and man['package_version']
    assert sorted(r['state'] for r in man['runs']) == ['done'] * 4
    assert {r['role'] for r in man['runs']} == {'control', 'ablation', 'baseline'}
    man = json.loads((out/'toy_mode'/'manifest.json').read_text())
    assert [r['shared_with'] for r in man['runs'] if r['shared_with']] == [f'../{Path(r.alias_of).parent.name}/{Path(r.alias_of).name}' for r in shared]
    # the dry run lists every run with its state; a second sweep finds the finished runs and redoes only the failed one
    rc = S.cli_sweep([*files, '--profile', 'smoke', '--seeds', '1', '--out', out, '--dry-run'])
    text = capsys.readouterr().out
    assert rc == 0 and '9 runs: 6 done, 1 failed, 0 to do; 2 shared' in text, text
    assert all(r.run_id in text for r in runs)
    mtimes = {r.run_id: os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns for r in runs if r is not bad[0]}
    res = S.sweep(files[:1] + files[2:], out=out, profile='smoke', seeds=1, workers=2)
    assert len(res.skipped) == 6 and not res.done and res.ok
    assert all(os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns == mtimes[r.run_id] for r in runs if r is not bad[0])
    # sweeping toy_mode alone later: the linked run is found finished through the link
    res = S.sweep([PLANS/'toy_mode.yaml'], out=out, profile='smoke', seeds=1, workers=1)
    assert len(res.skipped) == 3 and not res.done
    # ... and when the study that held it is deleted, the dangling link is replaced by a run of its own
    shutil.rmtree(out/'toy_x')
    res = S.sweep([PLANS/'toy_mode.yaml'], out=out, profile='smoke', seeds=1, workers=1)
    assert res.ok and len(res.done) == 1 and len(res.skipped) == 2
    r = next(r for r in res.runs if r.label == 'mode=b')
    assert not Path(r.run_dir).is_symlink() and S.run_state(r) == 'done'


def test_values_reach_the_notebook_as_literals(tmp_path):
    "A string that looks like code is injected as a Python string literal, never executed."
    evil = "x'); open('PWNED', 'w').write('x'); ('"
    plan = P.Plan('toy_lit', 'toy', 'mode', ['b'], 'a', ['top1'], [0], fixed={'device': evil}, source='test')
    plan = P.validate_plan(plan, 'smoke')
    run = S.expand_runs([plan], 'smoke', tmp_path)[0]
    info = engine_execute.execute_run(run, threads=1)
    assert info['status'] == 'done', info
    used = json.loads((Path(run.run_dir)/'params.json').read_text())
    assert used['device'] == evil and not (Path(run.run_dir)/'PWNED').exists() and not (ROOT/'PWNED').exists()


def test_yaml_cannot_construct_objects(tmp_path):
    p = tmp_path/'evil.yaml'
    p.write_text("study: !!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(P.PlanError, match='evil.yaml: is not valid YAML'): P.load_plans(p)
    assert not Path('PWNED').exists() and not (tmp_path/'PWNED').exists()


BAD_PLANS = [   # (change to toy_x.yaml, expected field in the message)
    (lambda t: t.replace('values: [0.1, 0.5]', 'values: [0.1, 1.5]'), "field 'values[1]'", 'out of range'),
    (lambda t: t.replace('values: [0.1, 0.5]', 'values: [0.1, big]'), "field 'values[1]'", 'not a number'),
    (lambda t: t.replace('parameter: x', 'parameter: y'), "field 'parameter'", "'y' is not a parameter"),
    (lambda t: t.replace('control: 0.3', ''), "field 'control'", 'is missing'),
    (lambda t: t.replace('values: [0.1, 0.5]', 'values: [0.1, 0.5'), None, 'not valid YAML at line'),
    (lambda t: t.replace('mode: b', 'mode: c'), "field 'fixed'", "'mode' = 'c' is not a known value"),
    (lambda t: t.replace('{flag: false}', '{flag: maybe}'), "field 'baselines[0]'", 'not a boolean'),
    (lambda t: t.replace('mode: b', 'seed: 3'), "field 'fixed'", 'set by the sweep'),
    (lambda t: t.replace('seeds: 2', 'seeds: 0'), "field 'seeds'", 'at least 1'),
    (lambda t: t.replace('notebook: toy_experiment.ipynb', 'notebook: ../../evil.ipynb'), "field 'notebook'", 'not a registered'),
]

@pytest.mark.parametrize('change,field,why', BAD_PLANS)
def test_bad_plans_name_file_and_field(tmp_path, capsys, change, field, why):
    "A malformed or out-of-domain plan stops before anything runs, naming the file and the field."
    p = tmp_path/'plan.yaml'
    p.write_text(change((PLANS/'toy_x.yaml').read_text()))
    rc = S.cli_sweep([p, '--profile', 'smoke', '--out', tmp_path/'runs'])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f'{p}:' in err and (field is None or field in err) and why in err, err
    assert not (tmp_path/'runs').exists(), 'nothing may run (or be created) for a bad plan'


def test_bad_cli_input(tmp_path, capsys):
    assert S.cli_sweep([PLANS/'toy_x.yaml', '--study', 'nope', '--out', tmp_path]) == 2
    assert "no study nope" in capsys.readouterr().err
    assert S.cli_sweep([tmp_path/'missing.yaml', '--out', tmp_path]) == 2
    assert 'missing.yaml: no such plan file' in capsys.readouterr().err
    with pytest.raises(SystemExit): S.cli_sweep([PLANS/'toy_x.yaml', '--profile', 'huge'])


def _toy_variant(tmp_path, name, untag=False, override=None) -> Path:
    "A copy of the toy notebook whose parameters cell lost its tag, or that overwrites a parameter after it."
    nb = nbformat.read(ASSETS/'toy_experiment.ipynb', as_version=4)
    if untag:   # as an over-eager notebook cleaner does
        for c in nb.cells: c.metadata.pop('tags', None)
    if override:
        i = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(override))
    path = tmp_path/f'{name}.ipynb'
    nbformat.write(nb, path)
    P.register_experiment(name, path, TOY.PARAMS, P.EXPERIMENTS['toy'].metrics)
    plan_file = tmp_path/f'{name}.yaml'
    plan_file.write_text((PLANS/'toy_x.yaml').read_text().replace('toy_experiment.ipynb', name).replace('study: toy_x', f'study: {name}'))
    return plan_file


def test_lost_parameters_tag(tmp_path, capsys):
    "Without the tag papermill silently runs the defaults: the sweep refuses the notebook, and the run check catches it."
    plan_file = _toy_variant(tmp_path, 'toy_untagged', untag=True)
    assert S.cli_sweep([plan_file, '--profile', 'smoke', '--out', tmp_path/'runs']) == 2
    err = capsys.readouterr().err
    assert "field 'notebook'" in err and "no cell tagged 'parameters'" in err
    # the check after every run: execute the untagged notebook anyway (bypassing the pre-check)
    plan = P.load_plans(plan_file, profile='smoke', seeds=1)[0]
    run = [r for r in S.expand_runs([plan], 'smoke', tmp_path/'runs') if r.params['x'] == 0.1][0]
    info = engine_execute.execute_run(run, threads=1)
    d = Path(run.run_dir)
    assert info['status'] == 'failed' and 'without writing params.json and metrics.json' in info['error']
    err = (d/'error.txt').read_text()
    assert "has NO cell tagged 'parameters'" in err
    assert not (d/'metrics.json').exists() and (d/'run.ipynb').exists() and S.run_state(run) == 'failed'


def test_params_json_checked_against_injected(tmp_path):
    "A notebook that writes its results but ignored an injected value fails the run loudly."
    plan_file = _toy_variant(tmp_path, 'toy_override', override='x = 0.3  # ignores the injected value')
    res = S.sweep([plan_file], out=tmp_path/'runs', profile='smoke', seeds=1, workers=2)
    bad = [r for r in res.runs if r.params['x'] != 0.3]
    assert set(res.failed) == {r.run_id for r in bad} and len(bad) == 2
    for r in bad:
        d = Path(r.run_dir)
        assert f"x: injected {r.params['x']}, notebook used 0.3" in (d/'error.txt').read_text()
        assert not (d/'metrics.json').exists() and (d/'metrics.rejected.json').exists() and S.run_state(r) == 'failed'


def _wait_for(cond, timeout, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond(): return True
        if proc is not None and proc.poll() is not None: return False
        time.sleep(0.2)
    return False


def _sweep_until_one_more_done(out, runs, sig, *options):
    "Start a sweep of toy_slow on one worker (with more CLI `options`); send `sig` as soon as one more run has finished."
    before = sum(S.run_state(r) == 'done' for r in runs)
    tmp = Path(out).parent/f'tmp-{sig.name}'; tmp.mkdir(parents=True, exist_ok=True)   # where its fork server's socket goes
    proc = _cli('sweep', PLANS/'toy_slow.yaml', '--profile', 'smoke', '--workers', '1', '--out', out, *options,
                env_extra={'TMPDIR': str(tmp)})
    try:
        assert _wait_for(lambda: sum(S.run_state(r) == 'done' for r in runs) > before, 120, proc), proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), (stdout, stderr)
    if sig == signal.SIGTERM: assert 'run the same command again' in stderr
    time.sleep(1.5)   # an orphaned kernel notices its dead parent within a second
    assert not list(tmp.glob('ca-fork-*')), 'a fork server socket folder was left behind'
    return stdout


@pytest.mark.slow
def test_interrupt_and_resume(tmp_path):
    "Kill sweeps (SIGTERM as Ctrl-C/kill do, then SIGKILL) after a run finished; the next invocation completes the sweep without recomputing finished runs."
    out = tmp_path/'runs'
    plan = P.load_plans(PLANS/'toy_slow.yaml', profile='smoke')[0]
    runs = S.expand_runs([plan], 'smoke', out)
    _sweep_until_one_more_done(out, runs, signal.SIGTERM)
    done1 = [r for r in runs if S.run_state(r) == 'done']
    assert 1 <= len(done1) < len(runs), [S.run_state(r) for r in runs]
    mtimes = {r.run_id: os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns for r in done1}
    stdout = _sweep_until_one_more_done(out, runs, signal.SIGKILL)
    assert f'({len(done1)} finished before' in stdout
    done2 = [r for r in runs if S.run_state(r) == 'done']
    assert len(done1) < len(done2) < len(runs), [S.run_state(r) for r in runs]
    mtimes.update({r.run_id: os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns for r in done2})
    proc = _cli('sweep', PLANS/'toy_slow.yaml', '--profile', 'smoke', '--workers', '2', '--out', out)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, (stdout, stderr)
    assert f'{len(done2)} finished before, {len(runs) - len(done2)} to run' in stdout
    for r in runs: check_run_dir(r)
    for r in done2: assert os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns == mtimes[r.run_id], 'a finished run was recomputed'
    assert not list(out.glob('*/*/.run.partial.ipynb')), 'a partial notebook was left behind'


def test_submitit_local_executor(tmp_path):
    "The submitit path (what Slurm uses), through submitit's LocalExecutor."
    pytest.importorskip('submitit')
    out = tmp_path/'runs'
    res = S.sweep([PLANS/'toy_mode.yaml'], out=out, profile='smoke', workers=2, executor='submitit-local')
    assert res.ok and len(res.done) == len(res.runs) == 3
    for r in res.runs: check_run_dir(r)
    assert (out/'.submitit').is_dir()


def test_slurm_without_cluster(tmp_path, capsys, monkeypatch):
    "Asking for Slurm where there is none is a clear usage error, before any run starts."
    monkeypatch.setenv('PATH', str(tmp_path/'no-slurm-here'))   # no sinfo, as on a machine without Slurm
    rc = S.cli_sweep([PLANS/'toy_mode.yaml', '--executor', 'slurm', '--partition', 'gpu', '--profile', 'smoke', '--out', tmp_path])
    assert rc == 2 and 'needs a Slurm cluster' in capsys.readouterr().err
    assert not (tmp_path/'toy_mode').exists(), 'nothing may be created before Slurm answered'


def test_lock(tmp_path, capsys):
    "Two sweeps into the same study directory at once: the second stops with a clear message."
    out = tmp_path/'runs'
    holder = subprocess.Popen([sys.executable, '-c',
        'import sys, time; sys.path.insert(0, sys.argv[1]); from contrastive_ablations.engine.records import StudyLock\n'
        'l = StudyLock(sys.argv[2]).acquire(); print("locked", flush=True); time.sleep(60)', str(ROOT), str(out/'toy_x')],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        rc = S.cli_sweep([PLANS/'toy_x.yaml', '--profile', 'smoke', '--out', out])
        err = capsys.readouterr().err
        assert rc == 3 and 'another sweep is already writing into' in err and f'pid {holder.pid}' in err, err
    finally:
        holder.kill(); holder.wait()
    assert not [p for p in (out/'toy_x').iterdir() if p.is_dir()], 'no run may start while the lock is held'
    with S.StudyLock(out/'toy_x'): pass   # released when its holder dies


# ---- the real experiment notebooks (skipped until contrastive_ablations.methods.ickd.distill / .clel and ablation_nbs/ exist) ----

def _real(name):
    pytest.importorskip(f'contrastive_ablations.{name}')
    if not (ROOT/'ablation_nbs'/f'{name}.ipynb').exists(): pytest.skip(f'ablation_nbs/{name}.ipynb not written yet')


def test_markdown_and_yaml_plans_agree():
    "The seed plans in markdown and the shipped YAML plans give the same runs (same ids, same directories)."
    _real('ickd'); _real('clel')
    md = P.load_plans(sorted((ASSETS/'seeds').glob('*.txt')), profile='smoke', seeds=2)
    seed_plans = ('clel_framework', 'clel_norm_direction', 'ickd_balance', 'ickd_margin')   # named: a user's own plans may sit beside them
    ym = P.load_plans([ROOT/'plans'/f'{s}.yaml' for s in seed_plans], profile='smoke', seeds=2)
    ids = lambda plans: sorted(r.run_id for r in S.expand_runs(plans, 'smoke', 'runs'))
    assert ids(md) == ids(ym) and len(ids(ym)) == 2 * (7 + 7 + 5 + 2)  # values + control + baselines


def check_real_run_dir(run: engine_runs.RunSpec):
    "A finished run of a real experiment notebook: its files, and a metrics.json key for every metric of the experiment."
    check_run_dir(run)
    m = json.loads((Path(run.run_dir)/'metrics.json').read_text())
    exp = P.find_experiment(run.notebook)
    keys = {f: [x.name for x in exp.metrics_of(f) if x.name in m] for f in exp.families}
    assert all(keys.values()), f'{run.run_id}: no metrics.json key for {keys}'


@pytest.mark.slow
def test_real_smoke_sweep(tmp_path, capsys):
    "A smoke-profile sweep of a δ plan and a framework plan through papermill on 2 workers."
    _real('ickd'); _real('clel')
    out = tmp_path/'runs'
    files = [PLANS/'smoke_ickd_margin.yaml', PLANS/'smoke_clel_framework.yaml']
    rc = S.cli_sweep([*files, '--profile', 'smoke', '--workers', '2', '--out', out])
    text = capsys.readouterr().out
    print(text)
    assert rc == 0, text
    runs = S.expand_runs(P.load_plans(files, profile='smoke'), 'smoke', out)
    assert len(runs) == 4
    for r in runs: check_real_run_dir(r)
    assert (out/'clel_framework'/'manifest.json').exists() and 'overhead:' in text


def _one_run_plan(tmp_path, name='one_run', **fixed) -> Path:
    "A plan of a single run: the control value only, one seed."
    plan = PLANS/('smoke_ickd_margin.yaml' if not fixed else 'toy_slow.yaml')
    text = plan.read_text()
    if fixed:   # the toy: one value, the given fixed parameters
        text = (f'study: {name}\nnotebook: toy\nparameter: x\nvalues: [0.3]\ncontrol: 0.3\nfixed:\n'
                + ''.join(f'  {k}: {v}\n' for k, v in fixed.items()) + 'metrics: [top1]\nseeds: 1\n')
    else:
        text = text.replace('values: [0.1]', 'values: [0.3]')
    f = tmp_path/f'{name}.yaml'; f.write_text(text)
    return f


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not hasattr(os, 'fork'), reason='needs 2 cores and fork servers')
@pytest.mark.parametrize('workers', [None, 1, (os.cpu_count() or 1) + 1], ids=['one-run-plan', 'workers-1', 'more-workers-than-cores'])
def test_runs_with_several_threads_finish_with_the_fork_server(tmp_path, workers):
    "A one-run plan, --workers 1, and more workers than cores give a run every core: its kernel, forked from the worker's server, must not hang."
    _real('ickd')
    plan, out = _one_run_plan(tmp_path), tmp_path/'runs'
    env = {**os.environ, 'CONTRASTIVE_ABLATIONS_FORK_KERNELS': '1'}   # the fork server on, whatever the caller's setting
    args = [sys.executable, '-m', 'contrastive_ablations', 'sweep', plan, '--profile', 'smoke', '--out', out]
    if workers: args += ['--workers', workers]
    try:
        r = subprocess.run(list(map(str, args)), cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f'the sweep hung (no end in 420 s); its output:\n{out}')
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f'x {os.cpu_count()} thread(s)' in r.stdout, r.stdout
    assert 'finished: 1 run(s) now' in r.stdout, r.stdout
    info = json.loads(next(out.glob('ickd_margin/*/run_info.json')).read_text())
    assert info['status'] == 'done' and info['threads'] == os.cpu_count()


def test_run_past_its_time_limit_fails_as_timed_out(tmp_path, capsys):
    "A run that sleeps past its time limit is stopped: failed, 'timed out', its partial notebook and error.txt kept; the sweep goes on and ends."
    plan, out = _one_run_plan(tmp_path, 'toy_stuck', sleep_s=120.0), tmp_path/'runs'
    t0 = time.monotonic()
    res = S.sweep([plan], out=out, profile='smoke', workers=1, run_timeout=0.1)   # 6 s
    took = time.monotonic() - t0
    assert took < 100, f'the sweep took {took:.0f} s: the limit did not stop the run'
    (run,) = res.runs
    assert not res.ok and re.match(r'timed out after [67] s \(limit 6 s\)', res.failed[run.run_id]), res.failed
    d = Path(run.run_dir)
    assert 'timed out' in (d/'error.txt').read_text()
    nb = nbformat.read(d/'run.ipynb', as_version=4)   # the notebook up to the stop
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in nb.cells)
    assert any('time.sleep(sleep_s)' in c.source for c in nb.cells)
    info = json.loads((d/'run_info.json').read_text())
    assert info['status'] == 'failed' and info['timed_out'] is True and info['time_limit_s'] == 6.0
    assert S.run_state(run) == 'failed'
    text = capsys.readouterr().out
    assert 'time limit per run: 6s (--run-timeout)' in text and f'FAILED {run.study}/{run.run_id}: timed out' in text
    assert not (d/'.run.partial.ipynb').exists()


@pytest.mark.parametrize('bad', ['0', '-1', 'nan', 'inf', 'x'])
def test_bad_run_timeout_is_a_usage_error(tmp_path, capsys, bad):
    "--run-timeout takes minutes > 0; anything else is refused before any run starts."
    with pytest.raises(SystemExit) if bad == 'x' else contextlib.nullcontext():
        rc = S.cli_sweep([PLANS/'toy_x.yaml', '--profile', 'smoke', '--out', tmp_path/'runs', '--run-timeout', bad])
        assert rc == 2 and 'run_timeout' in capsys.readouterr().err
    assert not (tmp_path/'runs').exists()


def test_prior_estimate_scales_with_the_experiments_cost_factors(tmp_path):
    "Before a run like it has finished, a run is expected to take PRIOR_S of its profile times its experiment's cost_factors."
    from contrastive_ablations.methods.ickd.spec import ICKD
    assert ICKD.cost_factors == {'with_controls': 3}
    nb = str(ICKD.notebook_path())
    runs = [engine_runs.RunSpec('s', f'r{i}', 'ablation', f'x={i}', 'x', i, 0, nb, {'profile': 'smoke', 'with_controls': wc}, str(tmp_path/f'r{i}'))
            for i, wc in enumerate((False, True))]
    toy = engine_runs.RunSpec('t', 'r9', 'ablation', 'x=9', 'x', 9, 0, str(ASSETS/'toy_experiment.ipynb'), {'profile': 'smoke'}, str(tmp_path/'r9'))
    assert S.estimate_seconds([*runs, toy], tmp_path) == {'r0': engine_timing.PRIOR_S['smoke'], 'r1': 3 * engine_timing.PRIOR_S['smoke'], 'r9': engine_timing.PRIOR_S['smoke']}

"""The `slurm` executor on a real Slurm cluster: a single node (this machine) that tests/slurm/cluster.py starts
for the session and stops afterwards. Smoke sweeps of the ICKD and CLEL notebooks; a run that raises; a job
cancelled with scancel; a job stopped at its time limit; a requeued job; a sweep interrupted while its jobs
are queued, then resumed. Skipped, with the reason, where Slurm cannot be installed or started."""
import json, os, signal, socket, sys, time
from pathlib import Path

import pytest
from submitit.core.utils import pickle_load

from contrastive_ablations.engine import plans as P
from contrastive_ablations.engine import sweep as S
from contrastive_ablations.engine import runs as engine_runs
from test_sweep import (PLANS, _cli, _real, _sweep_until_one_more_done, _wait_for, check_real_run_dir, check_run_dir,
                        registry)   # noqa: F401 (registry: the toy experiment, registered for each test)

sys.path.insert(0, str(Path(__file__).resolve().parent/'slurm'))
from cluster import ClusterUnavailable, SlurmCluster

pytestmark = pytest.mark.slurm
SLURM = ('--executor', 'slurm', '--cpus-per-job', '1')   # one CPU per run: as many runs at once as the node has cores


@pytest.fixture(scope='session')
def cluster(request, tmp_path_factory):
    "A running single-node cluster for the whole session (SLURM_CONF points at it); stopped even when tests fail."
    c = SlurmCluster(tmp_path_factory.mktemp('slurm'))
    try: c.start()
    except ClusterUnavailable as e: pytest.skip(f'no Slurm cluster here: {e}')
    mp = pytest.MonkeyPatch()
    mp.setenv('SLURM_CONF', str(c.conf))
    try: yield c
    finally:
        mp.undo()
        n = (c.root/'log'/'slurmctld.log').read_text(errors='replace').count('sched: Allocate JobId=')
        c.stop()
        tr, cap = (request.config.pluginmanager.get_plugin(p) for p in ('terminalreporter', 'capturemanager'))
        if tr and cap:
            with cap.global_and_fixture_disabled(): tr.write_line(f'slurm: {n} job(s) started on the test cluster; daemons stopped')


def _task(cluster, job_id) -> dict:
    "`scontrol show job` of one job (or array task) as a dict."
    out = cluster.run('scontrol', 'show', 'job', '--oneliner', job_id)
    return dict(kv.split('=', 1) for kv in out.split() if '=' in kv)


def _array_id(text) -> str:
    return text.split('submitted Slurm job ', 1)[1].split(':', 1)[0]


def test_preflight_errors(cluster, tmp_path, capsys, monkeypatch):
    "A partition that does not exist, GPUs or CPUs the nodes lack, a controller that does not answer: a clear error, no folder; the dry run shows the #SBATCH lines."
    out = tmp_path/'runs'
    def sweep_err(*extra):
        rc = S.cli_sweep([PLANS/'toy_mode.yaml', '--profile', 'smoke', '--out', out, '--executor', 'slurm', *extra])
        return rc, capsys.readouterr().err
    rc, err = sweep_err('--partition', 'nope')
    assert rc == 2 and f'--partition nope: Slurm has no such partition; it has {cluster.partition}' in err, err
    rc, err = sweep_err('--gpus-per-job', '1')
    assert rc == 2 and 'have no GPUs' in err, err
    rc, err = sweep_err('--cpus-per-job', str(cluster.cpus + 1))
    assert rc == 2 and f'have {cluster.cpus} CPUs' in err, err
    rc = S.cli_sweep([PLANS/'toy_mode.yaml', '--profile', 'smoke', '--out', out, '--executor', 'slurm', '--dry-run',
                      '--workers', '2', '--time', '5', '--cpus-per-job', '1'])
    text = capsys.readouterr().out
    for line in (f'--partition={cluster.partition}', '--array=0-2%2', '--cpus-per-task=1', '--time=5', f'--output={out}/.submitit/%A_%a/'):
        assert f'#SBATCH {line}' in text, (line, text)
    assert rc == 0 and '--gpus-per-node' not in text   # the node has no GPUs: none asked for
    dead = tmp_path/'dead.conf'   # the same cluster at a port where nothing listens
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    dead.write_text('\n'.join(f'SlurmctldPort={port}' if l.startswith('SlurmctldPort=') else l
                              for l in cluster.conf.read_text().splitlines()) + '\n')
    monkeypatch.setenv('SLURM_CONF', str(dead))
    rc, err = sweep_err()
    assert rc == 2 and 'Slurm is unreachable: `sinfo' in err, err
    assert not out.exists(), 'nothing may be created before Slurm has accepted the parameters'


def test_real_smoke_sweep_on_slurm(cluster, tmp_path, capsys):
    "A smoke-profile sweep of an ICKD plan and a CLEL plan, every run a Slurm array task; the same checks as locally."
    _real('ickd'); _real('clel')
    out = tmp_path/'runs'
    files = [PLANS/'smoke_ickd_margin.yaml', PLANS/'smoke_clel_framework.yaml']
    rc = S.cli_sweep([*files, '--profile', 'smoke', '--out', out, *SLURM])
    text = capsys.readouterr().out
    print(text)
    assert rc == 0, text
    array = _array_id(text)
    assert f'{out}/.submitit/{array}_<task>/{array}_<task>_0_log.out' in text
    runs = S.expand_runs(P.load_plans(files, profile='smoke'), 'smoke', out)
    assert len(runs) == 4
    for i, r in enumerate(runs):
        check_real_run_dir(r)
        info = json.loads((Path(r.run_dir)/'run_info.json').read_text())
        assert info['slurm_job'] == f'{array}_{i}' and info['threads'] == 1, info   # ran as task i of the array


TOY_SLURM = """study: toy_slurm
notebook: toy
parameter: sleep_s
values: [30, 60]
control: 0.0
baselines:
  - label: raises
    params: {fail: true}
metrics: [top1]
seeds: 1
"""


def test_failed_cancelled_timed_out_and_requeued_jobs(cluster, tmp_path, capsys):
    "One array: a run that finishes (then requeued: it must not run twice), one that raises, one cancelled, one past its time limit."
    plan = tmp_path/'toy_slurm.yaml'
    plan.write_text(TOY_SLURM)
    out = tmp_path/'runs'
    control, cancelled, too_long, raises = runs = S.expand_runs(P.load_plans(plan, profile='smoke'), 'smoke', out)
    proc = _cli('sweep', plan, '--profile', 'smoke', '--out', out, '--time', '1', *SLURM)
    try:
        # scancel the 30 s run once its notebook runs; requeue the control's finished job
        assert _wait_for(lambda: (Path(cancelled.run_dir)/engine_runs.PARTIAL).exists(), 60, proc), proc.communicate()
        array = next(l for l in cluster.run('squeue', '-h', '-o', '%i %j').split() if '_' in l).split('_')[0]
        time.sleep(2)
        cluster.run('scancel', f'{array}_1')
        assert _wait_for(lambda: S.run_state(control) == 'done' and _task(cluster, f'{array}_0')['JobState'] == 'COMPLETED', 60, proc)
        done_at = os.stat(Path(control.run_dir)/'metrics.json').st_mtime_ns
        cluster.run('scontrol', 'requeue', f'{array}_0')
        # Slurm holds a requeued job for 2 minutes; release it now, but not in the second its first run ended
        # (slurmd refuses to launch a job again right after it ended)
        time.sleep(2)
        cluster.run('scontrol', 'update', f'JobId={array}_0', 'StartTime=now')
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    print(stdout, stderr)
    assert proc.returncode == 1, (stdout, stderr)
    assert stdout.count(f'toy_slurm/{control.run_id}') == 1, 'the control is reported once'
    # the run that raised: its notebook and error are kept, and the summary lists it
    assert f'FAILED toy_slurm/{raises.run_id}: RuntimeError: toy experiment: failure requested' in stdout
    assert 'failure requested' in (Path(raises.run_dir)/'error.txt').read_text() and (Path(raises.run_dir)/'run.ipynb').exists()
    # cancelled and timed out: the state Slurm reported, the job's log, the partial notebook
    assert f'FAILED toy_slurm/{cancelled.run_id}: Slurm job {array}_1 was cancelled (scancel)' in stdout
    line = next(l for l in stdout.splitlines() if l.startswith(f'FAILED toy_slurm/{too_long.run_id}: '))
    assert 'time limit (--time 1 min); run the sweep again with a longer --time' in line, line   # warned by SIGUSR2, or killed
    for r, why in ((cancelled, 'was cancelled'), (too_long, 'time limit')):
        d = Path(r.run_dir)
        assert why in (d/'error.txt').read_text() and (d/'run.ipynb').exists() and not (d/engine_runs.PARTIAL).exists()
        assert S.run_state(r) == 'failed'
    # the requeued job ran again and found its run finished
    assert _wait_for(lambda: _task(cluster, f'{array}_0')['JobState'] == 'COMPLETED', 60)
    assert _task(cluster, f'{array}_0')['Restarts'] == '1'
    res = pickle_load(out/'.submitit'/f'{array}_0'/f'{array}_0_0_result.pkl')[1]
    assert res['status'] == 'done' and res['executed'] is False   # finished before: not run again
    assert os.stat(Path(control.run_dir)/'metrics.json').st_mtime_ns == done_at, 'the requeued job recomputed a finished run'
    check_run_dir(control)
    # the rerun, with a longer limit, completes the cancelled and the timed-out runs
    rc = S.cli_sweep([plan, '--profile', 'smoke', '--out', out, '--time', '3', *SLURM])
    text = capsys.readouterr().out
    assert rc == 1 and '4 runs (1 finished before, 3 to run)' in text, text
    for r in (control, cancelled, too_long): check_run_dir(r)
    assert S.run_state(raises) == 'failed'


def test_interrupt_while_queued_and_resume(cluster, tmp_path):
    "SIGTERM the sweep while its array tasks are queued: it cancels them; the next sweep submits only the unfinished runs."
    out = tmp_path/'runs'
    runs = S.expand_runs(P.load_plans(PLANS/'toy_slow.yaml', profile='smoke'), 'smoke', out)
    stdout = _sweep_until_one_more_done(out, runs, signal.SIGTERM, *SLURM)
    array = _array_id(stdout)
    assert f'cancelled Slurm job {array}' in stdout
    states = cluster.run('squeue', '-h', '-r', '-t', 'all', '-j', array, '-o', '%T').split()
    assert states and 'PENDING' not in states and 'RUNNING' not in states, states
    done = [r for r in runs if S.run_state(r) == 'done']
    assert 1 <= len(done) < len(runs)
    mtimes = {r.run_id: os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns for r in done}
    proc = _cli('sweep', PLANS/'toy_slow.yaml', '--profile', 'smoke', '--out', out, *SLURM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (stdout, stderr)
    left = len(runs) - len(done)
    assert f'({len(done)} finished before, {left} to run)' in stdout and f': {left} run(s), at most {left} at once' in stdout, stdout
    for r in runs: check_run_dir(r)
    for r in done: assert os.stat(Path(r.run_dir)/'metrics.json').st_mtime_ns == mtimes[r.run_id], 'a finished run was recomputed'


def test_example_method_through_slurm(cluster, tmp_path):
    "A method from another installed package runs through the Slurm executor: its jobs find it through its entry point."
    import subprocess
    from fixtures import install_example
    env = {**install_example(tmp_path/'site'), 'SLURM_CONF': str(cluster.conf)}
    plan, out = tmp_path/'site'/'label_smoothing'/'plans'/'label_smoothing.yaml', tmp_path/'runs'
    r = subprocess.run([sys.executable, '-m', 'contrastive_ablations', 'sweep', str(plan), '--profile', 'smoke', '--seeds', '1',
                        '--out', str(out), *SLURM], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = [json.loads((d/'run_info.json').read_text()) for d in sorted((out/'label_smoothing').glob('*_seed=*'))]
    assert len(done) == 4 and all(i['status'] == 'done' and i.get('slurm_job') for i in done), done

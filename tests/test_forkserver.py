"""Kernels forked from a preloaded process (contrastive_ablations.engine.forkserver): same results as ordinary kernels,
torch already imported, no kernel outliving its launcher, and the ordinary launch where the server is off."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from contrastive_ablations.engine import forkserver as fs
from contrastive_ablations.methods.clel.spec import CLEL
from contrastive_ablations.methods.ickd.spec import ICKD
from contrastive_ablations.engine.execute import child_pids, kernel_env
from contrastive_ablations.engine.local import fork_server_needs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='fork servers need fork (Linux, macOS)')


@pytest.fixture(scope='module')
def server():
    old = os.environ.get(fs.SOCKET_ENV)
    path = fs.start_fork_server(kernel_env(1), ICKD.preload, ICKD.warm)   # what a sweep of ICKD runs starts
    assert path and os.path.exists(path)
    yield path
    fs.SERVERS.pop(path).kill()
    if old is None: os.environ.pop(fs.SOCKET_ENV, None)
    else: os.environ[fs.SOCKET_ENV] = old


def _probe(tmp_path, km):
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    nb.cells = [nbformat.v4.new_code_cell("import sys, os\npreloaded = 'torch' in sys.modules"),
                nbformat.v4.new_code_cell("import torch\nprint(preloaded, os.getcwd(), os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")]
    src = tmp_path / 'probe.ipynb'; nbformat.write(nb, src)
    out = pm.execute_notebook(str(src), str(tmp_path / 'out.ipynb'), cwd=str(tmp_path), progress_bar=False,
                              kernel_manager_class=km)
    return out.cells[1].outputs[0]['text'].split()


def test_forked_kernel_is_preloaded_and_takes_over_cwd_and_env(server, tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    forked = _probe(tmp_path, fs.fork_kernel_manager())
    assert forked == ['True', str(tmp_path), '1', '1'], forked
    monkeypatch.setenv(fs.DISABLE_ENV, '0')   # switched off: the same manager starts an ordinary kernel
    assert _probe(tmp_path, fs.fork_kernel_manager())[0] == 'False'


def test_server_loads_what_the_sweeps_experiments_declare(tmp_path, monkeypatch):
    "A sweep's server imports the modules its experiments list (a toy template's gets ipykernel only) and warms their data once."
    from types import SimpleNamespace as Run
    nb = lambda e: Run(notebook=str(e.notebook_path()))
    preload, warm = fork_server_needs([nb(ICKD), nb(CLEL), nb(ICKD), Run(notebook='/elsewhere/not_declared.ipynb')])
    assert preload == tuple(dict.fromkeys(ICKD.preload + CLEL.preload)) and 'contrastive_ablations.methods.clel.train' in preload
    assert warm == tuple(dict.fromkeys(ICKD.warm + CLEL.warm)) and ('digits', 'test') in warm
    assert fork_server_needs([Run(notebook='/elsewhere/not_declared.ipynb')]) == ((), ())
    old = os.environ.get(fs.SOCKET_ENV)
    path = fs.start_fork_server(kernel_env(1))   # nothing declared: a bare server
    try:
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        assert _probe(tmp_path, fs.fork_kernel_manager())[0] == 'False'   # torch was not imported before the fork
    finally:
        fs.SERVERS.pop(path).kill()
        if old is None: os.environ.pop(fs.SOCKET_ENV, None)
        else: os.environ[fs.SOCKET_ENV] = old


def test_smoke_run_gives_the_same_metrics_forked_and_ordinary(server, tmp_path, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    metrics = {}
    for name, km in (('ordinary', None), ('forked', fs.fork_kernel_manager())):
        out = tmp_path / name
        kw = {'kernel_manager_class': km} if km else {}
        pm.execute_notebook(str(ROOT / 'ablation_nbs' / 'ickd.ipynb'), str(tmp_path / f'{name}.ipynb'), cwd=str(tmp_path),
                            parameters=dict(profile='smoke', device='cpu', out_dir=str(out), seed=3), progress_bar=False, **kw)
        m = json.loads((out / 'metrics.json').read_text())
        metrics[name] = {k: v for k, v in m.items() if not k.endswith(('wall_s', 'time_s'))}
    assert metrics['forked'] == metrics['ordinary']


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='reads /proc')
def test_kernel_exits_when_its_launcher_is_killed(server, tmp_path):
    from jupyter_client.connect import write_connection_file
    conn, _ = write_connection_file(str(tmp_path / 'kernel.json'))
    before = set(child_pids(fs.SERVERS[server].pid))
    launcher = subprocess.Popen([sys.executable, '-m', 'contrastive_ablations.engine.forkserver', 'launch', server, conn],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (set(child_pids(fs.SERVERS[server].pid)) - before) and time.monotonic() < deadline: time.sleep(0.05)
    kernels = set(child_pids(fs.SERVERS[server].pid)) - before
    assert len(kernels) == 1, kernels
    kernel = kernels.pop()
    launcher.send_signal(signal.SIGKILL); launcher.wait()   # what Jupyter's immediate shutdown does
    deadline = time.monotonic() + 10
    while Path(f'/proc/{kernel}').exists() and time.monotonic() < deadline: time.sleep(0.05)
    assert not Path(f'/proc/{kernel}').exists(), 'the kernel outlived its launcher'


def test_switched_off_or_without_server_the_command_is_ordinary(monkeypatch, tmp_path):
    monkeypatch.setenv(fs.DISABLE_ENV, '0')
    assert fs.start_fork_server() is None
    monkeypatch.delenv(fs.DISABLE_ENV); monkeypatch.delenv(fs.SOCKET_ENV, raising=False)
    km = fs.fork_kernel_manager()(kernel_name='python3')
    km.connection_file = str(tmp_path / 'k.json')
    assert 'ipykernel_launcher' in ' '.join(km.format_kernel_cmd())


def _thread_probe(tmp_path, km):
    "torch's thread count in a kernel, and the OS threads its first parallel regions started (a hang fails as a cell timeout)."
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    nb.cells = [nbformat.v4.new_code_cell("import os, sys, torch\npreloaded = 'torch' in sys.modules\n"
                                          "before = len(os.listdir('/proc/self/task'))"),
                nbformat.v4.new_code_cell("a = torch.randn(512, 512)\nfor _ in range(5): a = torch.tanh(a @ a)\n"
                                          "float(torch.randn(10**6).exp().sum())\n"
                                          "order = torch.randperm(10**6)   # as a data loader shuffles (where kernels hung)\n"
                                          "print(preloaded, torch.get_num_threads(), len(os.listdir('/proc/self/task')) - before)")]
    src = tmp_path / 'threads.ipynb'; nbformat.write(nb, src)
    out = pm.execute_notebook(str(src), str(tmp_path / 'out.ipynb'), cwd=str(tmp_path), progress_bar=False,
                              kernel_manager_class=km, execution_timeout=90)
    return out.cells[1].outputs[0]['text'].split()


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='counts threads in /proc')
def test_kernels_run_two_threads_whatever_the_server_ran_before_the_fork(tmp_path, monkeypatch):
    "A server given 2 threads whose preloading runs parallel regions (as loading data does): its forked kernels run 2 threads and do not hang (OpenMP after fork)."
    (tmp_path / 'parallel_at_import.py').write_text('import torch\nx = torch.randn(1500, 1500)\nfloat((x @ x).exp().sum())\n')
    path = str(tmp_path / 'kernels.sock')
    env = {**os.environ, **kernel_env(2), 'PYTHONPATH': os.pathsep.join([str(tmp_path), kernel_env()['PYTHONPATH']])}
    code = ('import sys; from contrastive_ablations import forkserver as fs; '
            'fs.serve(sys.argv[1], ("parallel_at_import",))')
    server = subprocess.Popen([sys.executable, '-c', code, path], env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(path) and server.poll() is None and time.monotonic() < deadline: time.sleep(0.1)
        assert os.path.exists(path), 'the fork server did not start'
        monkeypatch.setenv(fs.SOCKET_ENV, path); monkeypatch.setenv('OMP_NUM_THREADS', '2')
        preloaded, threads, new_threads = _thread_probe(tmp_path, fs.fork_kernel_manager())
        assert (preloaded, threads) == ('True', '2')
        assert int(new_threads) >= 1, 'no OpenMP worker thread started: the kernel runs on one thread'
    finally:
        server.kill(); server.wait()


def test_two_thread_kernel_from_a_sweep_workers_server(tmp_path, monkeypatch):
    "What a sweep worker with 2 threads per run does: start_fork_server(kernel_env(2)); its kernels run 2 threads."
    old = os.environ.get(fs.SOCKET_ENV)
    path = fs.start_fork_server(kernel_env(2), preload=('torch',))
    assert path
    try:
        monkeypatch.setenv('OMP_NUM_THREADS', '2')
        assert _thread_probe(tmp_path, fs.fork_kernel_manager())[:2] == ['True', '2']
    finally:
        fs.SERVERS.pop(path).kill()
        if old is None: os.environ.pop(fs.SOCKET_ENV, None)
        else: os.environ[fs.SOCKET_ENV] = old


def test_server_is_single_threaded_and_kernel_takes_its_run_count(monkeypatch):
    "The server keeps 1 OpenMP/MKL thread whatever it was given; a kernel takes OMP_NUM_THREADS of its request (else every CPU)."
    monkeypatch.setenv('OMP_NUM_THREADS', '7'); monkeypatch.setenv('MKL_NUM_THREADS', '7')
    code = ("import os, torch; from contrastive_ablations import forkserver as fs; fs._single_threaded(); "
            "print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], torch.get_num_threads())")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.stdout.split() == ['1', '1', '1'], r
    assert fs._threads_of({'OMP_NUM_THREADS': '3'}) == 3
    assert fs._threads_of({}) == fs._threads_of({'OMP_NUM_THREADS': 'x'}) == len(os.sched_getaffinity(0))


FORK_PROBE = r"""
import os, sys, time
os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '2'   # what a worker with 2 threads per run gives its server
from contrastive_ablations.engine import forkserver as fs
if sys.argv[1] == 'server': fs._single_threaded()                     # what the fork server does before preloading
import torch
x = torch.randn(1500, 1500); float((x @ x).exp().sum()); torch.randperm(10**6)   # preloading and data: parallel regions
pid = os.fork()
if pid == 0:   # as a kernel: the run's thread count, then a data loader's shuffle and some arithmetic
    torch.set_num_threads(fs._threads_of({'OMP_NUM_THREADS': '2'}))
    torch.randperm(10**6); float(torch.randn(10**6).exp().sum())
    print('ok', torch.get_num_threads(), flush=True); os._exit(0)
t0 = time.time()
while not os.waitpid(pid, os.WNOHANG)[0]:
    if time.time() - t0 > 20: print('hangs', flush=True); os.kill(pid, 9); os.waitpid(pid, 0); break
    time.sleep(0.05)
"""


def test_fork_after_the_servers_preparation_runs_any_thread_count():
    "The fork server's preparation (`_single_threaded`) leaves no OpenMP pool to lose in a fork: a 2-thread child runs; without it the same child hangs."
    run = lambda mode: subprocess.run([sys.executable, '-c', FORK_PROBE, mode], capture_output=True, text=True,
                                      timeout=180, cwd=ROOT).stdout.split()
    assert run('server') == ['ok', '2']
    assert run('plain') == ['hangs']   # the OpenMP-after-fork deadlock this guards against (the probe can tell)

"""Kernels forked from a preloaded process (contrastive_ablations.forkserver): same results as ordinary kernels,
torch already imported, no kernel outliving its launcher, and the ordinary launch where the server is off."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from contrastive_ablations import forkserver as fs
from contrastive_ablations.sweep import _child_pids, kernel_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='fork servers need fork (Linux, macOS)')


@pytest.fixture(scope='module')
def server():
    old = os.environ.get(fs.SOCKET_ENV)
    path = fs.start_fork_server(kernel_env(1))
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
    before = set(_child_pids(fs.SERVERS[server].pid))
    launcher = subprocess.Popen([sys.executable, '-m', 'contrastive_ablations.forkserver', 'launch', server, conn],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (set(_child_pids(fs.SERVERS[server].pid)) - before) and time.monotonic() < deadline: time.sleep(0.05)
    kernels = set(_child_pids(fs.SERVERS[server].pid)) - before
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

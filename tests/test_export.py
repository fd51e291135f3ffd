"""Exports of a runs folder: MLflow (a SQLite store, read back, served by a real `mlflow server` and opened in
headless Chromium), the tidy table runs.parquet, and a sweep started inside a Jupyter kernel.

A real smoke sweep (the ICKD margin plan trimmed to two values, two seeds each: four runs) is made once for the
module. MLflow is an optional extra: where it is not installed the MLflow tests are skipped with the reason, and
the error of `export mlflow` without it is checked instead. The server is started on 127.0.0.1 on a free port
and stopped by its process id (its process group) when the test ends, also when it fails. A screenshot of the
MLflow page goes to test-artifacts/export/.
"""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from contrastive_ablations.__main__ import main
from contrastive_ablations.engine.export import (TAG, curve_histories, default_tracking_uri, experiment_name, export_mlflow,
                                          runs_table, write_runs_table)
from contrastive_ablations.engine.report import summary_csv
from contrastive_ablations.engine.rundata import load_study

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / 'tests' / 'assets'
ARTIFACTS = ROOT / 'test-artifacts' / 'export'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or (
    '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
HAVE_MLFLOW = importlib.util.find_spec('mlflow') is not None
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason='mlflow is not installed (optional extra: pip install -e ".[mlflow]")')
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian: apt-get install chromium, or `make browser`)')
os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')   # offline: no usage reports from the client or the server


@pytest.fixture(scope='module')
def smoke_runs(tmp_path_factory):
    "A real smoke sweep: ICKD δ = 0.3 (control) and 0.1, seeds 0 and 1 (four runs, about a minute on 2 cores)."
    from contrastive_ablations.engine.sweep import sweep
    d = tmp_path_factory.mktemp('export_runs')
    res = sweep([ASSETS / 'plans' / 'smoke_ickd_margin.yaml'], out=d, profile='smoke', seeds=2, workers=2)
    assert res.ok and len(res.done) == 4, f'the smoke sweep failed: {res.failed}'
    return d


# ---- the tidy table -------------------------------------------------------------------------------------------
def test_runs_table_has_every_run(smoke_runs, tmp_path):
    "runs.parquet: one row per (study, value, seed, metric), every run of the study, the same numbers as metrics.json."
    f = write_runs_table(smoke_runs, tmp_path)
    t = pd.read_parquet(f)
    st = load_study(smoke_runs / 'ickd_margin')
    assert set(t.run_id) == set(st.runs.run_id) and len(set(t.run_id)) == 4
    assert set(t.value) == {'0.1', '0.3'} and sorted(t.seed.unique()) == [0, 1] and (t.status == 'ok').all()
    assert t.code.notna().all() and t.recipe.notna().all() and t.recipe.nunique() == 1   # what made each run
    assert t.groupby(['run_id', 'metric']).size().eq(1).all()
    for d in (smoke_runs / 'ickd_margin').iterdir():
        if not (d / 'metrics.json').is_file(): continue
        m = json.loads((d / 'metrics.json').read_text())
        got = t[t.run_id == d.name].set_index('metric').metric_value
        assert got['teacher_top1'] == m['teacher_top1'] and got['student_top1'] == m['student_top1'], d.name
    # a failed run is in the table too, with its error and no metric
    bad = smoke_runs.parent / 'with_failure'
    shutil.copytree(smoke_runs / 'ickd_margin', bad / 'ickd_margin', ignore=shutil.ignore_patterns('mlflow.db', '_mlartifacts'))
    run = next(p for p in (bad / 'ickd_margin').iterdir() if p.name.startswith('delta=0.1_seed=0'))
    (run / 'metrics.json').unlink(); (run / 'error.txt').write_text('RuntimeError: out of memory\n')
    t2 = runs_table(bad)
    row = t2[t2.run_id == run.name]
    assert len(row) == 1 and row.status.item() == 'failed' and row.metric.isna().item() and 'out of memory' in row.error.item()


def test_report_csv_writes_runs_parquet(smoke_runs, tmp_path, capsys):
    "`report RUNS --csv DIR` writes DIR/runs.parquet beside the summary CSVs."
    assert main(['report', str(smoke_runs), '--csv', str(tmp_path / 'csv')]) == 0
    assert (tmp_path / 'csv' / 'ickd_margin.csv').is_file()
    assert set(pd.read_parquet(tmp_path / 'csv' / 'runs.parquet').run_id) == set(load_study(smoke_runs / 'ickd_margin').runs.run_id)


# ---- MLflow ---------------------------------------------------------------------------------------------------
def test_export_without_mlflow_says_how_to_install(smoke_runs, monkeypatch, capsys):
    "Without the optional extra the command fails with exit status 2 and names `pip install -e \".[mlflow]\"`."
    monkeypatch.setitem(sys.modules, 'mlflow', None)
    monkeypatch.setitem(sys.modules, 'mlflow.tracking', None)
    assert main(['export', 'mlflow', str(smoke_runs), '--tracking-uri', 'sqlite:///' + str(smoke_runs / 'never.db')]) == 2
    assert 'pip install -e ".[mlflow]"' in capsys.readouterr().err
    assert not (smoke_runs / 'never.db').exists()


def test_sweep_report_site_never_import_mlflow():
    "The code paths of `make ablations` (sweep, report, site, reading runs) work without MLflow."
    code = ('import sys; import contrastive_ablations.engine.sweep, contrastive_ablations.engine.report, contrastive_ablations.engine.site, '
            'contrastive_ablations.engine.export, contrastive_ablations.__main__; assert "mlflow" not in sys.modules, "mlflow imported"')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope='module')
def exported(smoke_runs):
    "The smoke sweep exported twice into the default SQLite store (RUNS/mlflow.db): (first result, second result)."
    if not HAVE_MLFLOW: pytest.skip('mlflow is not installed (optional extra: pip install -e ".[mlflow]")')
    first = export_mlflow(smoke_runs, say=lambda *a: None)
    second = export_mlflow(smoke_runs, say=lambda *a: None)
    return first, second


@needs_mlflow
def test_export_twice_gives_each_run_once(smoke_runs, exported):
    first, second = exported
    assert first['tracking_uri'] == default_tracking_uri(smoke_runs) and (smoke_runs / 'mlflow.db').is_file()
    assert len(first['created']) == 4 and not first['kept'] and set(first['parents'].values()) == {'created'}
    assert not second['created'] and not second['replaced'] and len(second['kept']) == 4
    assert set(second['parents'].values()) == {'kept'}
    from mlflow.tracking import MlflowClient
    c = MlflowClient(first['tracking_uri'])
    runs = c.search_runs([first['experiments']['ickd_margin']], max_results=1000)
    kids = [r for r in runs if r.data.tags.get(f'{TAG}.kind') == 'run']
    assert sorted(r.data.tags[f'{TAG}.run_id'] for r in kids) == sorted(load_study(smoke_runs / 'ickd_margin').runs.run_id)
    assert len([r for r in runs if r.data.tags.get(f'{TAG}.kind') == 'summary']) == 2


@needs_mlflow
def test_search_runs_gives_the_reports_numbers(smoke_runs, exported):
    "Parent runs carry summary_csv's mean, interval, n and comparison; each seed's run its params, metrics, curves, notebook."
    from mlflow.tracking import MlflowClient
    first, _ = exported
    c = MlflowClient(first['tracking_uri']); exp = first['experiments']['ickd_margin']
    st = load_study(smoke_runs / 'ickd_margin'); s = summary_csv(st)
    parents = {r.data.tags[f'{TAG}.variant']: r for r in c.search_runs([exp], f"tags.`{TAG}.kind` = 'summary'")}
    assert set(parents) == {'0.1', '0.3'}
    checked = 0
    for row in s.itertuples():
        p = parents[row.variant].data
        for col in ('mean', 'ci_low', 'ci_high', 'n', 'std', 'diff', 'diff_ci_low', 'diff_ci_high', 'p'):
            v = getattr(row, col, float('nan'))
            if pd.notna(v) and v == v:
                assert p.metrics[f'{row.metric}_{col}'] == pytest.approx(float(v), rel=1e-12, abs=1e-12), (row.variant, row.metric, col)
                checked += 1
    assert checked >= 20
    assert parents['0.1'].data.tags['control'] == 'delta = 0.3' and 'teacher_top1:' in parents['0.1'].data.tags['comparison']
    assert parents['0.3'].data.tags['comparison'] == 'this is the control'
    d = next(p for p in (smoke_runs / 'ickd_margin').iterdir() if p.name.startswith('delta=0.1_seed=1'))
    kid = c.search_runs([exp], f"tags.`{TAG}.run_id` = '{d.name}'")
    assert len(kid) == 1
    kid = kid[0]
    assert kid.data.tags['mlflow.parentRunId'] == parents['0.1'].info.run_id and kid.info.status == 'FINISHED'
    params, metrics = json.loads((d / 'params.json').read_text()), json.loads((d / 'metrics.json').read_text())
    assert kid.data.params['delta'] == '0.1' and kid.data.params['seed'] == '1' and 'out_dir' not in kid.data.params
    assert set(kid.data.params) == set(params) - {'out_dir'}
    assert kid.data.metrics['teacher_top1'] == metrics['teacher_top1']
    hist = curve_histories(d / 'curves.csv')
    key = max(hist, key=lambda k: len(hist[k]))
    got = c.get_metric_history(kid.info.run_id, key)
    assert len(hist[key]) > 1 and sorted((m.step, m.value) for m in got) == sorted(hist[key])
    assert 'run.ipynb' in {a.path for a in c.list_artifacts(kid.info.run_id)}


@needs_mlflow
def test_new_runs_are_added_alone(smoke_runs, exported, tmp_path):
    "After one more seed only that run is added, and its value's parent takes the new statistics."
    first, _ = exported
    runs = tmp_path / 'runs'
    shutil.copytree(smoke_runs, runs, ignore=shutil.ignore_patterns('mlflow.db', '_mlartifacts'))
    uri = default_tracking_uri(runs)
    keep = next(p for p in (runs / 'ickd_margin').iterdir() if p.name.startswith('delta=0.3_seed=1'))
    held = tmp_path / keep.name; shutil.move(keep, held)        # as if this run had not finished yet
    a = export_mlflow(runs, say=lambda *x: None)
    assert len(a['created']) == 3 and a['tracking_uri'] == uri
    shutil.move(held, keep)                                     # ... and now it has
    b = export_mlflow(runs, say=lambda *x: None)
    assert b['created'] == [f'ickd_margin/{keep.name}'] and len(b['kept']) == 3
    assert b['parents']['ickd_margin/0.3'] == 'updated'   # (0.1's too: its comparison with the control changed)
    from mlflow.tracking import MlflowClient
    c = MlflowClient(uri)
    p = c.search_runs([b['experiments']['ickd_margin']], f"tags.`{TAG}.kind` = 'summary' and tags.`{TAG}.variant` = '0.3'")[0]
    s = summary_csv(load_study(runs / 'ickd_margin')).query("variant == '0.3' and metric == 'teacher_top1'").iloc[0]
    assert p.data.metrics['teacher_top1_n'] == 2 and p.data.metrics['teacher_top1_mean'] == pytest.approx(s['mean'], rel=1e-12)


@needs_mlflow
def test_cli_export(smoke_runs, exported, capsys):
    assert main(['export', 'mlflow', str(smoke_runs)]) == 0
    out = capsys.readouterr().out
    assert '0 run(s) added' in out and '4 already there' in out and 'mlflow ui --backend-store-uri sqlite:///' in out
    assert main(['export', 'mlflow', str(smoke_runs), '--study', 'nope']) == 2
    assert 'nope' in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _chromium(url, *args, timeout=120) -> str:
    prof = tempfile.mkdtemp(prefix='chromium_')
    try:
        return subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                               '--disable-background-networking', '--disable-component-update', '--disable-sync',
                               '--hide-scrollbars', f'--user-data-dir={prof}', *args, url],
                              capture_output=True, text=True, timeout=timeout).stdout
    finally:
        shutil.rmtree(prof, ignore_errors=True)


@needs_mlflow
@needs_browser
def test_mlflow_server_shows_the_study(smoke_runs, exported, tmp_path):
    "`mlflow server` on the exported store; its REST API lists the experiment and its page in Chromium shows it."
    first, _ = exported
    exp_id, name = first['experiments']['ickd_margin'], experiment_name(load_study(smoke_runs / 'ickd_margin'))
    port, log = _free_port(), open(tmp_path / 'server.log', 'w')
    server = subprocess.Popen([sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', first['tracking_uri'],
                               '--host', '127.0.0.1', '--port', str(port), '--workers', '1'],
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                              env={**os.environ, 'MLFLOW_DISABLE_TELEMETRY': 'true'})
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(base + '/health', timeout=2).status == 200: break
            except OSError: pass
            assert server.poll() is None, f'mlflow server exited: {(tmp_path / "server.log").read_text()[-2000:]}'
            time.sleep(1)
        else: pytest.fail(f'mlflow server did not answer within 120 s: {(tmp_path / "server.log").read_text()[-2000:]}')
        req = urllib.request.Request(base + '/api/2.0/mlflow/experiments/search', data=b'{"max_results": 100}',
                                     headers={'Content-Type': 'application/json'})
        names = {e['name']: e['experiment_id'] for e in json.load(urllib.request.urlopen(req, timeout=30))['experiments']}
        assert names.get(name) == exp_id, names
        url = f'{base}/#/experiments/{exp_id}/runs'   # the experiment's Runs tab
        dom = _chromium(url, '--dump-dom', '--virtual-time-budget=20000')
        assert name in dom, f'the MLflow page does not show {name!r} (DOM of {len(dom)} characters)'
        assert 'delta=0.3' in dom and 'delta=0.1' in dom   # the parent runs, listed by the JS app
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        png = ARTIFACTS / 'mlflow_experiment.png'; png.unlink(missing_ok=True)
        _chromium(url, f'--screenshot={png}', '--window-size=1400,900', '--virtual-time-budget=20000')
        assert png.is_file() and png.stat().st_size > 10_000
    finally:
        try: os.killpg(server.pid, signal.SIGTERM)   # the server, its workers: stopped by its process id
        except ProcessLookupError: pass
        try: server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL); server.wait(timeout=10)
        log.close()
    assert server.returncode is not None


# ---- a sweep inside a Jupyter kernel --------------------------------------------------------------------------
def test_sweep_in_a_kernel_shows_html_progress(tmp_path):
    "A notebook that calls sweep(...) shows a live HTML progress block (no per-run text lines) and ends with the study's table."
    import nbformat
    from nbclient import NotebookClient
    out = tmp_path / 'runs'
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    nb.cells = [nbformat.v4.new_code_cell(f'import sys; sys.path.insert(0, {str(ASSETS)!r})\n'
                                          'import toy_experiment; toy_experiment.register()\n'
                                          'from contrastive_ablations.engine.sweep import sweep'),
                nbformat.v4.new_code_cell(f"res = sweep([{str(ASSETS / 'plans' / 'toy_x.yaml')!r}], out={str(out)!r}, "
                                          "profile='smoke', seeds=1, workers=2)\nres"),
                nbformat.v4.new_code_cell('df = res.to_frame(); print(len(df), sorted(df.status.unique()))')]
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    outs = nb.cells[1].outputs
    html = [o for o in outs if o.output_type in ('display_data', 'update_display_data') and 'text/html' in o.get('data', {})]
    assert html, f'no HTML progress output: {[o.output_type for o in outs]}'
    block = html[0]['data']['text/html']
    assert 'sweep-progress' in block and '4/4 runs' in block and 'done 4/4' in block and 'toy_x/' in block
    text = ''.join(o.get('text', '') for o in outs if o.output_type == 'stream')
    assert '[  1/4]' not in text and 'sweep: 1 study, 4 runs' in text    # the per-run lines went to the HTML block
    result = [o for o in outs if o.output_type == 'execute_result']
    assert result and '<table' in result[0]['data']['text/html'] and 'toy_x' in result[0]['data']['text/html']
    assert "4 ['ok']" in ''.join(o.get('text', '') for o in nb.cells[2].outputs)

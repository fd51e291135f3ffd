"""Hostile but fair input: resource exhaustion in plans, files that are not what they claim, names that
become paths, silently wrong input, late failures (unwritable output, divergence, full or read-only disks).
Every test here failed on the code before the fix; each checks that the input is refused by name or handled."""
import errno, json, os, pickle, subprocess, sys, time
from pathlib import Path

import pytest

from contrastive_ablations.engine import plans as P
from contrastive_ablations.engine import sweep as S
from contrastive_ablations.engine import execute as engine_execute, runs as engine_runs

from test_sweep import ASSETS, ROOT, registry   # noqa: F401 (registry: the toy experiment, registered for each test)

TOY_X = (ASSETS/'plans'/'toy_x.yaml').read_text()


def _plan(tmp_path, text, name='plan.yaml') -> Path:
    p = tmp_path/name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def _refused(path, field=None, why=''):
    "load_plans refuses `path` with a PlanError naming the file (and the field)."
    with pytest.raises(P.PlanError) as e: P.load_plans(path, profile='smoke')
    msg = str(e.value)
    assert str(path) in msg and (field is None or f"field '{field}'" in msg) and why in msg, msg
    return msg


# ---- resource exhaustion in plans ----------------------------------------------------------------

def test_alias_bomb_refused_quickly(tmp_path):
    "A few hundred bytes of nested aliases (a million values here, billions in the wild) are refused before use."
    levels = ''.join(f'  - &l{i} [{", ".join([f"*l{i - 1}"] * 10)}]\n' for i in range(1, 7))
    text = TOY_X + 'title:\n  - &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n' + levels   # 10**7 values in 400 bytes
    p = _plan(tmp_path, text)
    t0 = time.perf_counter()
    _refused(p, None, 'expands to more than')
    assert time.perf_counter() - t0 < 2


def test_deep_nesting_refused(tmp_path):
    _refused(_plan(tmp_path, TOY_X.replace('values: [0.1, 0.5]', 'values: ' + '[' * 3000 + ']' * 3000)), None, 'nested deeper')


@pytest.mark.parametrize('change,field,why', [
    (('seeds: 2', 'seeds: [18446744073709551616]'), 'seeds[0]', 'out of range'),   # 2**64
    (('seeds: 2', 'seeds: [4294967296]'), 'seeds', 'ints in [0, 4294967295]'),
    (('seeds: 2', 'seeds: 1000000000000'), 'seeds', 'at most 1000'),
    (('values: [0.1, 0.5]', 'values: [0.1, 1' + '0' * 400 + ']'), 'values[1]', 'out of range'),
    (('seeds: 2', 'seeds: 1' + '0' * 5000), None, 'is not valid YAML'),
    (('values: [0.1, 0.5]', 'values: [' + ', '.join(['0.1'] * 5000) + ']'), 'values', 'too long'),
])
def test_huge_numbers_and_counts(tmp_path, change, field, why):
    _refused(_plan(tmp_path, TOY_X.replace(*change)), field, why)


def test_markdown_plan_values_bounded(tmp_path):
    "Markdown plans do not pass through the YAML reader: validate_plan bounds their values too."
    pytest.importorskip('contrastive_ablations.methods.ickd.distill')
    words = ', '.join(str(i / 1e4) for i in range(2000))
    p = _plan(tmp_path, f'### A\n- **Ablated Part**: margin threshold\n- **Action**: REPLACE\n- **Replacement**: {words}\n'
                        '- **Metrics**: top-1 accuracy\n', 'plan.md')
    _refused(p, 'values', 'list of 2000 items is too long')


def test_param_check_overflow():
    from contrastive_ablations.foundation.core import Param, ParameterError
    for kind, v in [(float, 10**400), (int, 10**400), (int, float('inf'))]:
        with pytest.raises(ParameterError, match="'x' = .* is out of range"): Param(kind, 0).check('x', v)
    from contrastive_ablations.foundation.experiments import EXPERIMENTS
    with pytest.raises(ParameterError, match="'seed'"): EXPERIMENTS['ickd'].knobs['seed'].check('seed', 2**64)


# ---- files that are not what they claim ------------------------------------------------------------

def test_plan_not_utf8_or_a_directory(tmp_path):
    _refused(_plan(tmp_path, TOY_X.replace('toy_x', 'toy_é').encode('latin-1')), None, 'is not UTF-8 text (byte 0xe9 at line 2)')
    (tmp_path/'dir.yaml').mkdir()
    _refused(tmp_path/'dir.yaml', None, 'is a directory')
    (tmp_path/'dir.md').mkdir()
    _refused(tmp_path/'dir.md', None, 'is a directory')


def test_yaml_tags_and_duplicate_keys(tmp_path):
    _refused(_plan(tmp_path, TOY_X + 'seeds: 3\n'), 'seeds', "line 14, column 1: duplicate key 'seeds' (first at line 13)")
    _refused(_plan(tmp_path, TOY_X.replace('mode: b', 'mode: !!str b')), None, 'is not allowed')


@pytest.mark.parametrize('content', ['[]', '"ok"', '{"status": "ok", "student_top1": "high"}', '{"status": ', '', 'null'])
def test_wrong_shape_result_is_redone(tmp_path, content):
    "A finished run whose metrics.json is valid JSON of the wrong shape (or truncated) is redone, never a crash."
    out = tmp_path/'runs'
    plans = [P.validate_plan(P.Plan('toy_one', 'toy', 'mode', ['b'], 'b', ['top1'], [0], source='mem'), 'smoke')]
    res = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    assert res.ok and len(res.done) == 1
    run = res.runs[0]
    (Path(run.run_dir)/'metrics.json').write_text(content)
    assert S.run_state(run) == 'todo'
    S.write_manifest(out, plans[0], res.runs, 'smoke', {})   # the manifest of a sweep that reads it back
    res2 = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    assert res2.ok and res2.done == [run.run_id] and not res2.skipped
    assert json.loads((Path(run.run_dir)/'metrics.json').read_text())['status'] == 'ok' and S.run_state(run) == 'done'
    (Path(run.run_dir)/'params.json').write_text('["seed"]')
    assert S.run_state(run) == 'todo'


def test_empty_or_corrupt_checkpoint_named(tmp_path):
    import torch
    from contrastive_ablations.foundation.training import load_checkpoint, CheckpointMismatchError
    for name, data in [('empty.pt', b''), ('text.pt', b'not a checkpoint'), ('cut.pt', None)]:
        p = tmp_path/name
        if data is None:
            torch.save({'arch': 'x', 'state_dict': {'w': torch.zeros(100)}}, p); p.write_bytes(p.read_bytes()[:200])
        else: p.write_bytes(data)
        with pytest.raises((CheckpointMismatchError, pickle.UnpicklingError), match=f'checkpoint {p} cannot be read'):
            load_checkpoint(p, torch.nn.Linear(2, 2))


def test_corrupt_extractor_cache(monkeypatch, tmp_path):
    "Damaged FID-extractor metadata is named by path, and the cache retrains it instead of crashing."
    cm = pytest.importorskip('contrastive_ablations.methods.clel.metrics')
    pt = tmp_path/'x.pt'; pt.write_bytes(b'weights')
    for bad in ['{"weights_sha256": ', '[]', '{"widths": [4, 8]}']:
        pt.with_suffix('.json').write_text(bad)
        with pytest.raises(cm.CorruptExtractorError, match=f'{pt.with_suffix(".json")} is damaged'): cm.load_classifier_extractor(pt)
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path/'cache'))
    try: e1 = cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)
    except FileNotFoundError as e: pytest.skip(f'Fashion-MNIST not available: {e}')
    meta = e1.path.with_suffix('.json'); meta.write_text(meta.read_text()[:30])   # truncated, as after a full disk
    with pytest.raises(cm.CorruptExtractorError, match=str(meta)):
        cm.get_fmnist_extractor('tiny', train_if_missing=False, n_train=300, epochs=1)
    e2 = cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)
    assert e2.meta['n_train'] == 300 and json.loads(meta.read_text()) == e2.meta
    e2.load_model()


# ---- names that become paths ------------------------------------------------------------------------

def test_study_name_with_newline_or_too_long(tmp_path, capsys):
    p = _plan(tmp_path, TOY_X.replace('study: toy_x', 'study: "toy_x\\n"'))
    assert S.cli_sweep([p, '--profile', 'smoke', '--out', tmp_path/'runs']) == 2
    assert "field 'study'" in capsys.readouterr().err and not (tmp_path/'runs').exists()
    _refused(_plan(tmp_path, TOY_X.replace('study: toy_x', 'study: ' + 'x' * 300)), 'study', '300 characters')
    _refused(_plan(tmp_path, TOY_X.replace('label: no flag', 'label: ' + 'n' * 300)), 'baselines[0].label', '1 to 64 characters')


def test_long_labels_make_short_run_ids():
    rid = engine_runs.make_run_id('mode=' + 'b' * 400, 0, {'mode': 'b' * 400})
    assert len(rid) < 120 and rid != engine_runs.make_run_id('mode=' + 'b' * 401, 0, {'mode': 'b' * 401})


# ---- silently wrong input -------------------------------------------------------------------------------

def test_duplicate_values_seeds_and_baselines(tmp_path, capsys):
    _refused(_plan(tmp_path, TOY_X.replace('values: [0.1, 0.5]', 'values: [0.0, -0.0]')), 'values[1]', 'repeats values[0]')
    _refused(_plan(tmp_path, TOY_X.replace('seeds: 2', 'seeds: [1, 2, 1]')), 'seeds', 'seed 1 is listed twice')

    text = TOY_X.replace('baselines:', 'baselines:\n  - label: no flag\n    params: {flag: false}')
    assert S.cli_sweep([_plan(tmp_path, text), '--profile', 'smoke', '--out', tmp_path/'runs']) == 2
    err = capsys.readouterr().err
    assert "plan.yaml: field 'baselines': 'no flag' and 'no flag' (seed 0) would share the run folder" in err, err
    assert not (tmp_path/'runs').exists()


@pytest.mark.parametrize('workers', ['0', '-3', '100000'])
def test_workers_zero_is_an_error(tmp_path, capsys, workers):
    rc = S.cli_sweep([ASSETS/'plans'/'toy_x.yaml', '--workers', workers, '--profile', 'smoke', '--out', tmp_path/'runs'])
    assert rc == 2 and f'workers = {workers}' in capsys.readouterr().err
    assert not (tmp_path/'runs').exists()


# ---- late failures -------------------------------------------------------------------------------------

def test_unwritable_out_refused_before_any_run(tmp_path, capsys):
    from contrastive_ablations.foundation.safeio import check_writable, OutputError
    (tmp_path/'file').write_text('x')
    rc = S.cli_sweep([ASSETS/'plans'/'toy_x.yaml', '--profile', 'smoke', '--out', tmp_path/'file'/'runs'])
    err = capsys.readouterr().err
    assert rc == 2 and 'is not writable' in err and str(tmp_path/'file'/'runs') in err, err
    with pytest.raises(OutputError, match='not writable'): check_writable(tmp_path/'file')


def test_too_long_out_in_a_dry_run(tmp_path, capsys):
    rc = S.cli_sweep([ASSETS/'plans'/'toy_x.yaml', '--profile', 'smoke', '--dry-run', '--out', tmp_path/('y' * 300)])
    assert rc == 2 and 'File name too long' in capsys.readouterr().err


def test_template_checks_out_dir_before_training(tmp_path):
    "Run directly with papermill, the ICKD template stops at an unwritable out_dir before training."
    pm = pytest.importorskip('papermill')
    (tmp_path/'file').write_text('x')
    with pytest.raises(pm.PapermillExecutionError, match='OutputError') as e:
        pm.execute_notebook(str(ROOT/'ablation_nbs'/'ickd.ipynb'), str(tmp_path/'out.ipynb'), progress_bar=False,
                            parameters=dict(profile='smoke', out_dir=str(tmp_path/'file'/'run')), cwd=str(tmp_path))
    nb = json.loads((tmp_path/'out.ipynb').read_text())
    trained = [c for c in nb['cells'] if 'run(params)' in ''.join(c['source'])]
    assert trained and trained[0]['execution_count'] is None, 'training must not start'


def test_divergence_at_any_magnitude():
    "lam = 1e308 makes the teacher's loss infinite at the first step: status 'diverged', the metrics that exist."
    ickd = pytest.importorskip('contrastive_ablations.methods.ickd.distill')
    try: metrics, curves, extras = ickd.run_experiment(progress=False, lam=1e308, profile='smoke', dataset='fashion_mnist')
    except FileNotFoundError as e: pytest.skip(f'Fashion-MNIST not available: {e}')
    assert metrics['status'] == 'diverged' and 'teacher' in extras['message']
    assert 'teacher_top1' in metrics and 'student_top1' in metrics and 'wall_time_s' in metrics


def test_role_curves_of_a_run_that_logged_nothing():
    import pandas as pd
    ickd = pytest.importorskip('contrastive_ablations.methods.ickd.distill')
    from contrastive_ablations.foundation.training import TrainResult
    c = ickd.role_curves('teacher', TrainResult(pd.DataFrame(), pd.DataFrame(), 'diverged', 'nan', 0.0), 10)
    assert list(c.columns) == ickd.CURVE_COLUMNS and len(c) == 0


@pytest.mark.parametrize('err,why', [(errno.ENOSPC, 'no space left'), (errno.EROFS, 'read-only file system')])
def test_full_or_read_only_disk_stops_with_summary(tmp_path, capsys, monkeypatch, err, why):
    "A full or read-only output disk stops the sweep with what finished and how to resume; a rerun completes it."
    out, plan = tmp_path/'runs', ASSETS/'plans'/'toy_mode.yaml'
    real, calls = S.write_manifest, []
    def failing(out_, plan_, runs, *a):
        calls.append(1)
        if len(calls) == 3: raise OSError(err, os.strerror(err), str(Path(out_)/plan_.study/'manifest.json'))
        return real(out_, plan_, runs, *a)
    monkeypatch.setattr(S, 'write_manifest', failing)
    rc = S.cli_sweep([plan, '--profile', 'smoke', '--seeds', '1', '--workers', '1', '--out', out])
    cap = capsys.readouterr()
    assert rc == 4, cap
    assert f'cannot write {out}/toy_mode/manifest.json: {why}' in cap.err and 'finished: 2 run(s) now' in cap.err
    assert 'run the same command again' in cap.err and 'Traceback' not in cap.err + cap.out
    monkeypatch.setattr(S, 'write_manifest', real)
    assert S.cli_sweep([plan, '--profile', 'smoke', '--seeds', '1', '--workers', '1', '--out', out]) == 0
    assert '(2 finished before, 1 to run)' in capsys.readouterr().out


def test_disk_errors_in_a_worker_stop_the_sweep():
    spec = engine_runs.RunSpec('s', 'r', 'control', 'l', 'x', 1, 0, 'nb', {}, '/tmp/x')
    with pytest.raises(OSError): engine_execute.failure_record(spec, OSError(errno.ENOSPC, 'No space left on device'))
    assert engine_execute.failure_record(spec, RuntimeError('boom'))['status'] == 'failed'


# ---- values at the boundary ----------------------------------------------------------------------------

ICKD_MARGIN = (ROOT/'plans'/'ickd_margin.yaml').read_text(encoding='utf-8')


@pytest.mark.parametrize('device', ['<img src=x onerror=alert(1)>', 'cuda:', 'cuda:-1', 'gpu', 'CPU', 'cpu ', 'cuda:1; rm -rf /'])
def test_device_outside_its_documented_domain_refused(tmp_path, device):
    "`device` takes 'auto', 'cpu', 'cuda' or 'cuda:N' only: anything else is refused naming the field, before any run."
    text = ICKD_MARGIN.replace('dataset: fashion_mnist', f'dataset: fashion_mnist\n  device: {json.dumps(device)}')
    _refused(_plan(tmp_path, text), 'fixed', "parameter 'device'")


def test_devices_in_the_domain_accepted(tmp_path):
    for device in ('auto', 'cpu', 'cuda', 'cuda:0', 'cuda:7'):
        text = ICKD_MARGIN.replace('dataset: fashion_mnist', f'dataset: fashion_mnist\n  device: "{device}"')
        assert P.load_plans(_plan(tmp_path, text), profile='smoke')[0].fixed['device'] == device


@pytest.mark.parametrize('where,field', [('fixed', 'fixed.teacher_arch'), ('label', 'baselines[0].label'),
                                         ('title', 'title'), ('value', 'values[0]')])
def test_text_that_is_not_utf8_refused_naming_the_field(tmp_path, where, field):
    "A lone surrogate (YAML's \\ud800 escape) in any text of a plan is refused with the field, not at run time."
    bad = '"a\\ud800b"'
    text = {'fixed': ICKD_MARGIN.replace('dataset: fashion_mnist', f'dataset: fashion_mnist\n  teacher_arch: {bad}'),
            'label': ICKD_MARGIN.replace('label: vanilla teacher', f'label: {bad}'),
            'title': ICKD_MARGIN.replace('title: Ablation of the margin threshold δ', f'title: {bad}'),
            'value': TOY_X.replace('parameter: x', 'parameter: mode').replace('values: [0.1, 0.5]', f'values: [{bad}]')
                          .replace('control: 0.3', 'control: a').replace('  mode: b\n', '  x: 0.3\n')}[where]
    _refused(_plan(tmp_path, text), field, 'cannot be written as UTF-8')


def test_lone_surrogate_in_a_parameter_named():
    from contrastive_ablations.foundation.core import ParameterError
    from contrastive_ablations.methods.ickd.spec import ICKD
    with pytest.raises(ParameterError, match=r"parameter 'teacher_arch' = 'x\\ud800' is not valid text"):
        ICKD.validate({'teacher_arch': 'x\ud800'})


def test_scientific_notation_reads_as_numbers(tmp_path):
    "`1e-1` and `5E-1` (text for YAML 1.1) are numbers in a plan, as YAML 1.2 and every user read them; quoted, they stay text."
    plan = P.load_plans(_plan(tmp_path, TOY_X.replace('values: [0.1, 0.5]', 'values: [1e-1, 5E-1, 2.5e-1]')), profile='smoke')[0]
    assert plan.values == [0.1, 0.5, 0.25]
    _refused(_plan(tmp_path, TOY_X.replace('values: [0.1, 0.5]', 'values: ["1e-1"]')), 'values[0]', 'is not a number')
    text = ICKD_MARGIN.replace('dataset: fashion_mnist', 'dataset: fashion_mnist\n  lr: 1e-3')
    assert P.load_plans(_plan(tmp_path, text), profile='smoke')[0].fixed['lr'] == 0.001


# ---- the report shows exactly what ran -----------------------------------------------------------------

@pytest.mark.parametrize('label', ['.hidden', '..', '...', '_private', '-.-', '!!!'])
def test_labels_become_visible_folders_and_their_runs_are_reported(tmp_path, label):
    "A baseline label that slugs to a hidden or empty name gets a visible folder; its finished runs are in the study."
    from contrastive_ablations.engine.rundata import load_study
    text = TOY_X.replace('label: no flag', f'label: {json.dumps(label)}').replace('values: [0.1, 0.5]', 'values: [0.5]')
    plans = P.load_plans(_plan(tmp_path, text), profile='smoke', seeds=1)
    runs = S.expand_runs(plans, 'smoke', tmp_path/'runs')
    assert all(not r.run_id.startswith(('.', '_', '-')) and r.run_id.split('_seed=')[0] for r in runs), [r.run_id for r in runs]
    res = S.sweep(plans, out=tmp_path/'runs', profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    assert res.ok
    st = load_study(tmp_path/'runs'/'toy_x')
    assert len(st.runs) == 3 and (st.runs.status == 'ok').all() and label in set(st.runs.variant.astype(str))


def test_slugs_of_distinct_hidden_labels_do_not_collide():
    ids = {engine_runs.make_run_id(l, 0, {'flag': f}) for l, f in (('.a', True), ('a', False), ('..', True), ('...', False))}
    assert len(ids) == 4 and not any(i.startswith('.') for i in ids)


def test_params_json_that_disagrees_with_the_run_is_invalid_and_redone(tmp_path):
    "A run folder whose params.json is not the run its name says is reported invalid (never a value of the study) and redone."
    import shutil
    from contrastive_ablations.engine.rundata import load_study
    from contrastive_ablations.engine.report import format_report
    plans = P.load_plans(ASSETS/'plans'/'toy_x.yaml', profile='smoke', seeds=1)
    out = tmp_path/'runs'
    res = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    run = next(r for r in res.runs if r.label == 'x=0.5')
    p = Path(run.run_dir)/'params.json'
    p.write_text(p.read_text().replace('"x": 0.5', '"x": 0.9'))
    # a copy of a run under another run's name (the manifest does not list it)
    other = next(r for r in res.runs if r.label == 'x=0.1')
    stray = out/'toy_x'/other.run_id.replace(other.run_id.rsplit('-', 1)[1], '0badc0de')
    shutil.copytree(other.run_dir, stray)
    st = load_study(out/'toy_x')
    assert '0.9' not in set(st.runs.variant.astype(str)) and len(st.runs) == 4
    bad = st.runs[st.runs.run_id == run.run_id].iloc[0]
    assert bad.status == 'invalid' and bad.variant == '0.5' and 'params.json says x=0.9' in bad.error
    assert [r['run_id'] for r in st.left_out] == [stray.name] and 'identity hash 0badc0de' in st.left_out[0]['why']
    text = format_report(st)
    assert f'left out: {stray.name}: invalid' in text and 'x=0.9' in text
    assert S.run_state(run) == 'todo'   # a value a run never had is never counted as done: the sweep redoes it
    # a value of the identity that was not injected (the toy's default sleep_s) is checked too
    p.write_text(p.read_text().replace('"x": 0.9', '"x": 0.5').replace('"sleep_s": 0.0', '"sleep_s": 1.0'))
    assert S.run_state(run) == 'todo'
    res2 = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    assert res2.ok and res2.done == [run.run_id] and S.run_state(run) == 'done'


# ---- damaged folders never cost work -------------------------------------------------------------------

@pytest.mark.parametrize('name', ['metrics.json', 'params.json', 'run.ipynb', 'error.txt', 'run_info.json', 'curves.csv'])
def test_a_run_file_that_is_a_folder_is_kept_and_the_run_redone(tmp_path, name):
    "Whatever the shape of a run's files, the resume moves what it cannot judge aside (never deletes it) and reruns."
    plans = [P.validate_plan(P.Plan('toy_one', 'toy', 'mode', ['b'], 'b', ['top1'], [0], source='mem'), 'smoke')]
    out = tmp_path/'runs'
    res = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    d = Path(res.runs[0].run_dir)
    notebook = (d/'run.ipynb').read_bytes()
    (d/name).unlink(missing_ok=True); (d/name).mkdir(); (d/name/'inner.txt').write_text('keep me')
    res2 = S.sweep(plans, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    assert res2.ok and res2.done == [res.runs[0].run_id], res2
    aside = [p for p in d.iterdir() if p.name.startswith('.damaged-')]
    assert len(aside) == 1 and (aside[0]/name/'inner.txt').read_text() == 'keep me'
    if name != 'run.ipynb': assert (aside[0]/'run.ipynb').read_bytes() == notebook   # the old notebook is kept
    assert S.run_state(res.runs[0]) == 'done' and ((d/name).is_file() or name == 'error.txt' and not (d/name).exists())


def test_a_failing_rerun_of_a_damaged_folder_writes_the_error_it_points_to(tmp_path):
    plans = [P.validate_plan(P.Plan('toy_one', 'toy', 'mode', ['b'], 'b', ['top1'], [0], source='mem'), 'smoke')]
    out = tmp_path/'runs'
    run = S.expand_runs(plans, 'smoke', out)[0]
    d = Path(run.run_dir); d.mkdir(parents=True)
    (d/'metrics.json').mkdir(); (d/'error.txt').mkdir()
    plans_fail = [P.validate_plan(P.Plan('toy_one', 'toy', 'mode', ['b'], 'b', ['top1'], [0], fixed={'fail': True}, source='mem'), 'smoke')]
    res = S.sweep(plans_fail, out=out, profile='smoke', workers=1, stream=open(os.devnull, 'w'))
    d = Path(res.runs[0].run_dir)
    assert not res.ok and (d/'error.txt').is_file() and 'failure requested' in (d/'error.txt').read_text()


# ---- report --csv: unwritable paths refused with a message ---------------------------------------------

def _report_csv(tmp_path, capsys, target):
    from contrastive_ablations.engine.report import cli_report
    from fixtures import write_study
    if not (tmp_path/'runs').exists(): write_study(tmp_path/'runs', 'ickd_margin', seeds=2)
    rc = cli_report([str(tmp_path/'runs'), '--csv', str(target)])
    cap = capsys.readouterr()
    return rc, cap.err, cap.out


@pytest.mark.parametrize('kind', ['file', 'proc', 'folder-in-the-way'])
def test_report_csv_to_an_unusable_path(tmp_path, capsys, kind):
    target = {'file': tmp_path/'a_file', 'proc': Path('/proc/contrastive_ablations_csv'), 'folder-in-the-way': tmp_path/'csv'}[kind]
    if kind == 'file': target.write_text('x')
    if kind == 'folder-in-the-way': (target/'ickd_margin.csv').mkdir(parents=True)
    rc, err, out = _report_csv(tmp_path, capsys, target)
    assert rc == 2 and 'report: --csv:' in err and str(target) in err and 'Traceback' not in err + out, err
    assert out == ''   # refused before any report is printed


@pytest.mark.parametrize('err_no,why', [(errno.EROFS, 'read-only file system'), (errno.ENOSPC, 'no space left')])
def test_report_csv_on_a_read_only_or_full_disk(tmp_path, capsys, monkeypatch, err_no, why):
    import tempfile
    from contrastive_ablations.foundation import core
    from fixtures import write_study
    write_study(tmp_path/'runs', 'ickd_margin', seeds=2)
    real = tempfile.mkstemp
    def refuse(*a, **kw):
        if Path(str(kw.get('dir', ''))).name == 'csv': raise OSError(err_no, os.strerror(err_no))
        return real(*a, **kw)
    monkeypatch.setattr(tempfile, 'mkstemp', refuse)
    rc, err, out = _report_csv(tmp_path, capsys, tmp_path/'csv')
    assert rc == 2 and why in err and 'Traceback' not in err, err
    monkeypatch.setattr(tempfile, 'mkstemp', real)
    # the disk fills up after the check: the message names the file, still no traceback
    def full(path, text): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(core, 'atomic_write_text', full)
    rc, err, out = _report_csv(tmp_path, capsys, tmp_path/'csv2')
    assert rc == 2 and 'cannot write' in err and 'no space left' in err and 'Traceback' not in err, err


def test_a_named_pipe_in_a_run_folder_never_hangs(tmp_path):
    "A named pipe where a run file belongs is reported (report) and moved aside (sweep), never read: reading it would block forever."
    code = f'''
import os
from pathlib import Path
from contrastive_ablations.foundation.core import write_run_outputs
from contrastive_ablations.engine.rundata import load_study
from contrastive_ablations.engine import sweep as S
from contrastive_ablations.engine import execute as engine_execute, runs as engine_runs
root = Path({str(tmp_path)!r})/'st'
for i, name in enumerate(['metrics.json', 'params.json', 'run_info.json']):
    d = root/f'delta=0.{{i + 1}}-seed=0'
    write_run_outputs(d, {{'delta': 0.1 * (i + 1), 'seed': 0}}, {{'status': 'ok', 'teacher_top1': 80.0}})
    os.unlink(d/name); os.mkfifo(d/name)
st = load_study(root)
bad = st.runs[st.runs.status == 'invalid']
assert len(bad) == 2 and bad.error.str.contains('is not a file').all(), st.runs
assert engine_runs.read_json_object(root/'delta=0.1-seed=0'/'metrics.json') is None
aside = engine_execute.move_aside(root/'delta=0.3-seed=0')
assert aside is not None and (aside/'run_info.json').is_fifo()
print('ok')
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]

"""Hostile but fair input (issue #15): resource exhaustion in plans, files that are not what they claim, names that
become paths, silently wrong input, late failures (unwritable output, divergence, full or read-only disks).
Every test here failed on the code before the fix; each checks that the input is refused by name or handled."""
import errno, json, os, pickle, subprocess, sys, time
from pathlib import Path

import pytest

from contrastive_ablations import plans as P
from contrastive_ablations import sweep as S

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
    pytest.importorskip('contrastive_ablations.ickd')
    words = ', '.join(str(i / 1e4) for i in range(2000))
    p = _plan(tmp_path, f'### A\n- **Ablated Part**: margin threshold\n- **Action**: REPLACE\n- **Replacement**: {words}\n'
                        '- **Metrics**: top-1 accuracy\n', 'plan.md')
    _refused(p, 'values', 'list of 2000 items is too long')


def test_param_check_overflow():
    from contrastive_ablations.core import Param, ParameterError
    for kind, v in [(float, 10**400), (int, 10**400), (int, float('inf'))]:
        with pytest.raises(ParameterError, match="'x' = .* is out of range"): Param(kind, 0).check('x', v)
    from contrastive_ablations.experiments import EXPERIMENTS
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
    from contrastive_ablations.training import load_checkpoint, CheckpointMismatchError
    for name, data in [('empty.pt', b''), ('text.pt', b'not a checkpoint'), ('cut.pt', None)]:
        p = tmp_path/name
        if data is None:
            torch.save({'arch': 'x', 'state_dict': {'w': torch.zeros(100)}}, p); p.write_bytes(p.read_bytes()[:200])
        else: p.write_bytes(data)
        with pytest.raises((CheckpointMismatchError, pickle.UnpicklingError), match=f'checkpoint {p} cannot be read'):
            load_checkpoint(p, torch.nn.Linear(2, 2))


def test_corrupt_extractor_cache(monkeypatch, tmp_path):
    "Damaged FID-extractor metadata is named by path, and the cache retrains it instead of crashing."
    cm = pytest.importorskip('contrastive_ablations.clel_metrics')
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
    rid = S.make_run_id('mode=' + 'b' * 400, 0, {'mode': 'b' * 400})
    assert len(rid) < 120 and rid != S.make_run_id('mode=' + 'b' * 401, 0, {'mode': 'b' * 401})


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
    from contrastive_ablations.safeio import check_writable, OutputError
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
    ickd = pytest.importorskip('contrastive_ablations.ickd')
    try: metrics, curves, extras = ickd.run_experiment(progress=False, lam=1e308, profile='smoke', dataset='fashion_mnist')
    except FileNotFoundError as e: pytest.skip(f'Fashion-MNIST not available: {e}')
    assert metrics['status'] == 'diverged' and 'teacher' in extras['message']
    assert 'teacher_top1' in metrics and 'student_top1' in metrics and 'wall_time_s' in metrics


def test_role_curves_of_a_run_that_logged_nothing():
    import pandas as pd
    ickd = pytest.importorskip('contrastive_ablations.ickd')
    from contrastive_ablations.training import TrainResult
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
    spec = S.RunSpec('s', 'r', 'control', 'l', 'x', 1, 0, 'nb', {}, '/tmp/x')
    with pytest.raises(OSError): S._failed(spec, OSError(errno.ENOSPC, 'No space left on device'))
    assert S._failed(spec, RuntimeError('boom'))['status'] == 'failed'

"""The benchmarks run on a CPU: their code paths on tiny sizes (the numbers they print are measured elsewhere)."""
import importlib.util, json

import pytest
import torch

from conftest import ROOT
from contrastive_ablations.foundation.core import native_bf16


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT/'benchmarks'/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(not native_bf16('cpu'), reason='this CPU has no native bfloat16 arithmetic')
def test_bench_precision_smoke(tmp_path):
    out = tmp_path/'prec.json'
    res = _load('bench_precision').main(['--smoke', '--threads', '1', '--out', str(out)])
    assert json.loads(out.read_text())['device'] == 'cpu'
    assert set(res['speed']) == {'ickd_teacher', 'sgld_small', 'sgld_base'}
    assert all(r['fp32_s'] > 0 and r['bf16_s'] > 0 for r in res['speed'].values())
    for r in res['sgld'].values():   # same chains, same noise: bf16 stays far closer than another noise seed
        assert r['chain_bf16_vs_fp32'] < r['chain_fp32_other_noise']
    assert set(res['runs']['teacher_top1']['values']) == {'fp32', 'bf16'}


@pytest.mark.slow
def test_bench_clel_iter_smoke():
    res = _load('bench_clel_iter').main(['--profile', 'smoke', '--iters', '1', '--rounds', '1', '--warmup', '1', '--threads', '1'])
    assert res['suite_s_per_iter'] > 0 and res['plain_s_per_iter'] > 0 and res['precision'] == 'auto'


@pytest.mark.slow
def test_bench_workers_smoke(tmp_path):
    res = _load('bench_workers').main(['--smoke', '--cores', '2', '--json', str(tmp_path/'w.json')])
    assert set(res) == {'ickd_teacher', 'sgld_small'}
    assert all(set(v) == {'1x2', '2x1'} and min(v.values()) > 0 for v in res.values())
    assert json.loads((tmp_path/'w.json').read_text())['cores'] == 2

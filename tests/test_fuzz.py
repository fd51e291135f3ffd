"""Fuzz test: generated plans (YAML text, markdown text and dicts) and parameter sets end either in a
clean error that names the file and the field, or in a valid run list: never another exception, never a hang."""
import re, signal
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st

from contrastive_ablations.engine import plans as P
from contrastive_ablations.engine import sweep as S
from contrastive_ablations.foundation.core import ParameterError, validate_params
from test_sweep import TOY, registry   # noqa: F401 (registry: the toy experiment, registered for each test)

FUZZ = settings(max_examples=120, deadline=2000, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def time_box():
    "A hang fails the test (SIGALRM) instead of blocking the suite."
    def stop(*_): raise TimeoutError('fuzz test ran for more than 50 s')
    old = signal.signal(signal.SIGALRM, stop); signal.alarm(50)
    yield
    signal.alarm(0); signal.signal(signal.SIGALRM, old)


# ---- generators --------------------------------------------------------------------------------------

VALID = dict(study='toy_x', notebook='toy', parameter='x', values=[0.1, 0.5], control=0.3, metrics=['top1', 'stability'],
             seeds=2, baselines=[{'label': 'no flag', 'params': {'flag': False}}], fixed={'mode': 'b'}, title='t')
FIELDS = list(P.REQUIRED_FIELDS + P.OPTIONAL_FIELDS) + ['valeus', '']
WORDS = ['x', 'mode', 'flag', 'seed', 'device', 'profile', 'out_dir', 'a', 'b', 'none', 'top1', 'fid', 'toy', 'clel',
         'toy_x', 'toy_x\n', '../evil', 'label', 'params', '-0.0', '0.1', 'yes', '1e400', 'δ']

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.floats(-1, 2),
                    st.text(max_size=20), st.sampled_from(WORDS))
data = st.recursive(scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.sampled_from(WORDS) | st.integers(), c, max_size=4),
                    max_leaves=15)


@st.composite
def plan_dicts(draw):
    "The valid toy plan with a few fields dropped, replaced by junk, or replaced by plausible values."
    d = dict(VALID)
    for k in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        how = draw(st.sampled_from(['drop', 'junk', 'plausible']))
        if how == 'drop': d.pop(k, None)
        elif how == 'junk': d[k] = draw(data)
        else:
            d[k] = draw({'values': st.lists(st.floats(-0.5, 1.5) | st.sampled_from([0.0, -0.0, 0.3]), max_size=6),
                         'seeds': st.integers(-2, 2000) | st.lists(st.integers(-1, 2**33), max_size=5),
                         'parameter': st.sampled_from(['x', 'mode', 'flag', 'seed', 'device', 'nope']),
                         'fixed': st.dictionaries(st.sampled_from(['mode', 'flag', 'x', 'seed', 'y']), scalars, max_size=3),
                         'baselines': st.lists(st.fixed_dictionaries({'label': st.text(max_size=70) | st.sampled_from([None, 'b', 'x=0.1', 'x=0.3']),
                                                                      'params': st.dictionaries(st.sampled_from(['flag', 'mode', 'x', 'q']), scalars, max_size=2)}),
                                               max_size=3),
                        }.get(k, data))
    return d


@st.composite
def yaml_texts(draw):
    "A dumped plan, then mangled: random edits, tags, anchors and aliases, duplicate lines, cut short, bad bytes."
    text = yaml.safe_dump(draw(plan_dicts()), allow_unicode=True)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(['!!python/object:os.system ', '&a ', '*a ', '[', ']', '{', ': ', '\n',
                                                '- ', '"', '\t', '!!binary ', '<<: *a\n', 'seeds: 3\n', '%YAML 1.1\n---\n',
                                                '\x00', '\ufeff'])
                                 | st.text(max_size=5)) + text[i:]
    if draw(st.booleans()): text = text[:draw(st.integers(0, len(text)))]
    raw = text.encode('utf-8')
    if draw(st.integers(0, 9)) == 0: raw += b'\xff\xfe'
    return raw


PART_WORDS = ['margin threshold', 'δ', 'balance parameter', 'λ', 'contrastive framework', 'norm-direction', 'margin and balance',
              'nothing', 'Î´']
@st.composite
def markdown_texts(draw):
    "Markdown 'Ablation Plan' sections built from plausible and junk pieces."
    out = []
    for _ in range(draw(st.integers(0, 3))):
        out.append(f'### {draw(st.text(max_size=15))}')
        for name, vals in [('Ablated Part', PART_WORDS), ('Action', ['REPLACE', 'REMOVE', 'SWAP', '']),
                           ('Replacement', ['0.1, 0.5', 'SimCLR, BYOL', 'on; off', '0.1, -0.0, 0', 'big', '1e999']),
                           ('Metrics', ['top-1 accuracy, FID', 'training stability', 'AUROC', 'speed'])]:
            if draw(st.integers(0, 5)): out.append(f'- **{name}**: {draw(st.sampled_from(vals) | st.text(max_size=10))}')
    return '\n'.join(out).encode('utf-8')


# ---- the property ---------------------------------------------------------------------------------------

def _clean_error(e, path):
    "A PlanError/ParameterError that names the file and what is wrong (a field, a parameter or a line)."
    msg = str(e)
    assert str(path) in msg, msg
    assert re.search(r"field '|parameter|line \d|is a directory|not UTF-8|no ablation studies|expected a mapping|"
                     r"no such plan|larger than|key .* is not a name", msg), msg


def _valid_runs(plans, out):
    "Every run of `plans` lies in its study folder, with a short safe run id and validated parameters."
    runs = S.expand_runs(plans, 'smoke', out)
    assert runs
    for r in runs:
        assert Path(r.run_dir).parent == Path(out).resolve()/r.study and re.fullmatch(r'[A-Za-z0-9._=+-]+', r.run_id), r.run_dir
        assert len(r.run_id) < 120 and len(r.study) <= 64
        validate_params(P.find_experiment(r.notebook).knobs, {k: v for k, v in r.params.items()})
    return runs


def _outcome(load, path, out):
    try: plans = load()
    except (P.PlanError, ParameterError) as e: return _clean_error(e, path)
    try: _valid_runs(plans, out)
    except (P.PlanError, ParameterError) as e: return _clean_error(e, path)


@FUZZ
@given(d=plan_dicts())
def test_fuzz_plan_dicts(tmp_path, d):
    src = tmp_path/'fuzz.yaml'
    _outcome(lambda: [P.validate_plan(P.plan_from_dict(d, src), 'smoke')], src, tmp_path/'runs')


@FUZZ
@given(raw=yaml_texts())
def test_fuzz_yaml_texts(tmp_path, raw):
    src = tmp_path/'fuzz.yaml'; src.write_bytes(raw)
    _outcome(lambda: P.load_plans(src, profile='smoke'), src, tmp_path/'runs')


@pytest.fixture(scope='module')
def real_experiments():
    "Markdown plans map to the real experiments, declared without torch: nothing to import first."
    assert {'ickd', 'clel'} <= set(P.EXPERIMENTS)


@settings(FUZZ, max_examples=60)
@given(raw=markdown_texts())
def test_fuzz_markdown_texts(tmp_path, real_experiments, raw):
    src = tmp_path/'fuzz.md'; src.write_bytes(raw)
    _outcome(lambda: P.load_plans(src, profile='smoke'), src, tmp_path/'runs')


@FUZZ
@given(params=st.dictionaries(st.sampled_from(list(TOY.PARAMS) + ['detla', 'x ', '']), scalars, max_size=6))
def test_fuzz_parameter_sets(params):
    try: full = validate_params(TOY.PARAMS, params, where='fuzz: ')
    except ParameterError as e:
        assert str(e).startswith('fuzz: ') and ("parameter '" in str(e) or 'unknown parameter' in str(e)), e
        return
    assert set(full) == set(TOY.PARAMS)

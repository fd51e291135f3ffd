"""The engine (every module of `contrastive_ablations/engine`, and the CLI) names no method: no experiment, no knob of
one experiment, no study. The names come from the experiments' own specs, so a new method is checked without editing
this test. (That the engine imports no method module is checked by test_layout's walk of the imports.)"""
import io
import re
import tokenize
from pathlib import Path

from contrastive_ablations.foundation.experiments import EXPERIMENTS

PACKAGE = Path(__file__).resolve().parents[1] / 'contrastive_ablations'
ENGINE = sorted(PACKAGE.glob('engine/*.py')) + [PACKAGE / '__main__.py']


def method_words() -> dict:
    "word -> what it is: each experiment's name, its study names and the knobs not every experiment has."
    shared = set.intersection(*(set(e.knobs) for e in EXPERIMENTS.values()))
    words = {}
    for e in EXPERIMENTS.values():
        words[e.name] = f'experiment {e.name!r}'
        words.update({p.study: f'study of {e.name}' for p in e.parts})
        words.update({k: f'knob of {e.name}' for k in e.knobs if k not in shared and len(k) > 1})   # 'T' matches '%T'
    return words


def names_in(src: str, words: dict) -> list:
    "(line, word, token) for each method word in a string or comment that the module does not define as its own name."
    tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    own = {t.string for t in tokens if t.type == tokenize.NAME}   # e.g. seedstats' significance level `alpha`
    hits = []
    for t in tokens:
        if t.type in (tokenize.STRING, tokenize.COMMENT):
            hits += [(t.start[0], w, t.string[:80]) for w in words
                     if w not in own and re.search(rf'(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])', t.string)]
    return hits


def test_the_checks_see_the_methods():
    "The word and module lists are not empty, and they would catch what they look for."
    words = method_words()
    assert {'ickd', 'clel', 'ickd_margin', 'delta', 'framework'} <= set(words) and len(ENGINE) > 10
    assert [w for _, w, _ in names_in("x = params['delta']  # the margin\n", words)] == ['delta']
    assert names_in("def f(alpha):\n    'at `alpha`'\n", {'alpha': 'knob'}) == []   # its own name, not the knob


def test_engine_names_no_method():
    words = method_words()
    problems = []
    for path in ENGINE:
        src = path.read_text(encoding='utf-8')
        problems += [f'{path.name}:{line}: {words[w]} {w!r} in {tok!r}' for line, w, tok in names_in(src, words)]
    assert not problems, 'the engine names a method:\n' + '\n'.join(problems)


def test_templates_tag_every_cell_with_its_phase():
    "Each experiment's template: one phase- tag on every code cell but the parameters cell, and one phase-run cell."
    import json
    from contrastive_ablations.engine.timing import PHASE_TAG
    for e in EXPERIMENTS.values():
        cells = [c for c in json.loads(e.notebook_path().read_text())['cells'] if c['cell_type'] == 'code']
        tags = [[t for t in c['metadata'].get('tags', []) if t.startswith(PHASE_TAG)] for c in cells
                if 'parameters' not in c['metadata'].get('tags', [])]
        assert all(len(t) == 1 for t in tags), (e.name, tags)
        assert sum(t == [PHASE_TAG + 'run'] for t in tags) == 1, (e.name, tags)


def test_phases_come_from_the_tags_and_the_runs_own_report(tmp_path):
    "A run's phases: the tagged cells' durations, the phase-run cell split by timings.json; a cell's code is never read."
    import json
    from contrastive_ablations.engine.timing import run_phases, time_profile
    def cell(tags, s, src='print(1)'):
        return {'cell_type': 'code', 'source': src, 'metadata': {'tags': tags, 'papermill': {'start_time': '2026-01-01T00:00:02', 'duration': s}}}
    nb = {'metadata': {'papermill': {'start_time': '2026-01-01T00:00:00'}},
          'cells': [{**cell([], 7.0), 'cell_type': 'markdown'}, cell(['parameters'], 0.5), cell(['phase-imports'], 3.0, 'metrics = run(params)'), cell(['phase-run'], 10.0),
                    cell(['phase-figures'], 1.0, 'write_run_outputs()'), cell([], 0.25), cell(['phase-writing'], 0.5)]}
    (tmp_path / 'run.ipynb').write_text(json.dumps(nb))
    (tmp_path / 'timings.json').write_text(json.dumps({'seconds': {'data': 2.0, 'fid_auroc': 5.0, 'imports': 9.0, 'Bad key': 1.0, 'neg': -1}}))
    ph = run_phases(tmp_path, notebook_wall_s=20.0)
    assert ph == {'kernel_start': 2.0, 'imports': 3.5, 'data': 2.0, 'fid_auroc': 5.0, 'run_other': 3.0, 'figures': 1.0,
                  'writing': 0.5, 'cells': 0.25, 'papermill': 2.75}, ph
    line = time_profile([{'experiment': 'clel', 'phases': ph}])[0]
    assert 'FID/AUROC 5.0 s' in line and 'data 2.0 s' in line and line.index('kernel start') < line.index('data'), line

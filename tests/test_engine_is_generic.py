"""The engine (plans, sweeps, fork server, run data, statistics, figures, report, site, export, CLI) names no method:
no experiment, no knob of one experiment, no study, and imports no module a method declares. The names come from the
experiments' own specs, so a new method is checked without editing this test."""
import ast
import io
import re
import tokenize
from pathlib import Path

from contrastive_ablations.experiments import EXPERIMENTS

PACKAGE = Path(__file__).resolve().parents[1] / 'contrastive_ablations'
ENGINE = ('plans', 'sweep', 'forkserver', 'rundata', 'seedstats', 'figures', 'report', 'site', 'export', '__main__')


def method_words() -> dict:
    "word -> what it is: each experiment's name, its study names and the knobs not every experiment has."
    shared = set.intersection(*(set(e.knobs) for e in EXPERIMENTS.values()))
    words = {}
    for e in EXPERIMENTS.values():
        words[e.name] = f'experiment {e.name!r}'
        words.update({p.study: f'study of {e.name}' for p in e.parts})
        words.update({k: f'knob of {e.name}' for k in e.knobs if k not in shared and len(k) > 1})   # 'T' matches '%T'
    return words


def method_modules() -> set:
    "Package modules the experiments declare (their config class and what their runs preload)."
    named = [e.config.split(':')[0] for e in EXPERIMENTS.values() if e.config]
    named += [m for e in EXPERIMENTS.values() for m in e.preload]
    return {m.split('.', 1)[1] for m in named if m.startswith('contrastive_ablations.')}


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


def imports_of(src: str) -> set:
    "Package modules a module imports (absolute or relative)."
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('contrastive_ablations')):
            mod = (node.module or '').removeprefix('contrastive_ablations').lstrip('.')
            out |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('contrastive_ablations.')}
    return out


def test_the_checks_see_the_methods():
    "The word and module lists are not empty, and they would catch what they look for."
    words, modules = method_words(), method_modules()
    assert {'ickd', 'clel', 'ickd_margin', 'delta', 'framework'} <= set(words) and {'ickd', 'clel'} <= modules
    assert [w for _, w, _ in names_in("x = params['delta']  # the margin\n", words)] == ['delta']
    assert names_in("def f(alpha):\n    'at `alpha`'\n", {'alpha': 'knob'}) == []   # its own name, not the knob
    assert imports_of('from .clel import fit\nimport contrastive_ablations.ickd\nfrom contrastive_ablations import report') \
           == {'clel', 'ickd', 'report'}


def test_engine_names_no_method():
    words, modules = method_words(), method_modules()
    problems = []
    for m in ENGINE:
        src = (PACKAGE / f'{m}.py').read_text(encoding='utf-8')
        problems += [f'{m}.py:{line}: {words[w]} {w!r} in {tok!r}' for line, w, tok in names_in(src, words)]
        problems += [f'{m}.py imports the method module {x!r}' for x in sorted(imports_of(src) & modules)]
    assert not problems, 'the engine names a method:\n' + '\n'.join(problems)

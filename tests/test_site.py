"""The documentation site, built from a smoke sweep and opened offline in a real (headless) browser.

A smoke-profile sweep of the four plans runs first (conftest's `smoke_runs`, or $CONTRASTIVE_ABLATIONS_TEST_RUNS names
a runs directory to use instead, e.g. `runs/smoke` from `make smoke`). The site is built from it with three lessons executed
completely, slow cells included: 12_ickd (its slow cell reads the sweep's runs), 21_ebm (mostly formulas) and
44_report. Chromium opens the pages with every host name unresolvable, so nothing can come from the network,
and the checks read the DOM after JavaScript ran: formulas rendered by KaTeX, the figure of 12_ickd's slow
cell, a figure on a run page, the smoke banner of the results pages, no load from another host. A second
build from the same cache must execute nothing. Screenshots go to test-artifacts/site/ (look at them: they
are the test's evidence).
"""
import os
import re
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from contrastive_ablations.engine.report import find_studies
from contrastive_ablations.engine.site import build_site, renderer_available, find_katex, MARKER

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / 'test-artifacts' / 'site'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or (
    '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
STUDIES = ('ickd_margin', 'ickd_balance', 'clel_framework', 'clel_norm_direction')
LESSONS = ['12_ickd.ipynb', '21_ebm.ipynb', '44_report.ipynb']   # names: found in their part folders
LESSON_PAGES = ['methods/ickd/12_ickd', 'methods/clel/21_ebm', 'engine/44_report']

needs_browser = pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed '
                                   '(Debian: apt-get install chromium, or `make browser`)')
needs_renderer = pytest.mark.skipif(not renderer_available(), reason='neither quarto nor smalldocs is available')


class Page(HTMLParser):
    "What the checks need from a page: headings (with the position of each), images, links, loads."
    LOADS = {'script': 'src', 'img': 'src', 'iframe': 'src', 'source': 'src', 'video': 'src', 'audio': 'src',
             'link': 'href', 'embed': 'src', 'object': 'data'}

    def __init__(self, html):
        super().__init__()
        self.headings, self.imgs, self.links, self.loads, self.katex, self._h = [], [], [], [], 0, None
        self.text, self._skip = [], 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ('h1', 'h2', 'h3'): self._h = [tag, '', len(self.imgs)]
        if tag == 'img': self.imgs.append(a.get('src') or '')
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag in self.LOADS and a.get(self.LOADS[tag]): self.loads.append((tag, a[self.LOADS[tag]]))
        if tag == 'span' and 'katex' in (a.get('class') or '').split(): self.katex += 1
        if tag in ('script', 'style'): self._skip += 1

    def handle_data(self, data):
        if self._h is not None: self._h[1] += data
        if not self._skip: self.text.append(data)

    def handle_endtag(self, tag):
        if tag in ('script', 'style'): self._skip = max(0, self._skip - 1)
        if self._h is not None and tag == self._h[0]:
            self.headings.append((tag, ' '.join(self._h[1].split()), self._h[2])); self._h = None

    def heads(self):
        return [t for _, t, _ in self.headings]

    def figures(self, min_bytes=2000, after=None, before=None):
        "Embedded PNG images large enough to be plots, optionally between two headings (by text)."
        lo = next(i for _, t, i in self.headings if t == after) if after else 0
        hi = next((i for _, t, i in self.headings if t == before), len(self.imgs)) if before else len(self.imgs)
        return [s for s in self.imgs[lo:hi] if s.startswith('data:image/png;base64,') and len(s) > min_bytes]

    def external(self):
        "Loads (script, link, img, ...) from another host."
        return [(t, u) for t, u in self.loads if re.match(r'(https?:)?//', u.strip(), re.I)]


def chromium(url, *args, timeout=120):
    "Run headless Chromium on `url`, offline (no host name resolves), with extra `args`; returns stdout."
    prof = tempfile.mkdtemp(prefix='chromium_')
    try:
        p = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                            '--disable-background-networking', '--disable-component-update', '--disable-sync',
                            '--host-resolver-rules=MAP * ~NOTFOUND', '--hide-scrollbars', f'--user-data-dir={prof}',
                            *args, url], capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    return p.stdout


def open_page(site: Path, rel: str, shot: str, height=2400) -> Page:
    "Load a page in Chromium, save a screenshot into test-artifacts/site/, return its DOM after JavaScript ran."
    f = site / rel
    assert f.is_file(), f'{rel} was not built; pages: {sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))[:40]}'
    url = f.as_uri()
    dom = chromium(url, '--dump-dom', '--virtual-time-budget=5000')
    assert '<html' in dom.lower(), f'Chromium returned no DOM for {rel}'
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f'{shot}.png'
    png.unlink(missing_ok=True)
    chromium(url, f'--screenshot={png}', f'--window-size=1280,{height}', '--virtual-time-budget=5000')
    assert png.is_file() and png.stat().st_size > 10_000, f'no screenshot of {rel}'
    return Page(dom)


@pytest.fixture(scope='module')
def runs_dir(smoke_runs, tmp_path_factory):
    "A private copy of the real smoke runs of the four plans (conftest's `smoke_runs`): no other test process touches it."
    d = tmp_path_factory.mktemp('runs') / 'runs'
    shutil.copytree(smoke_runs, d, symlinks=True)   # runs shared by two studies are relative links: they stay inside
    return d


@pytest.fixture(scope='module')
def site(runs_dir, tmp_path_factory):
    "The site built twice from the runs with one cache: the first build and the second (nothing changed)."
    tmp = tmp_path_factory.mktemp('site')
    with pytest.MonkeyPatch.context() as mp:   # artefacts of its own: tests in the other process write to the shared cache
        mp.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp / 'artefacts'))
        t = time.time()
        first = build_site(runs_dir, tmp / '_site', lessons=LESSONS, workers=2, cache_dir=tmp / 'cache')
        first['wall_s'] = time.time() - t
        t = time.time()
        again = build_site(runs_dir, tmp / '_site', lessons=LESSONS, workers=2, cache_dir=tmp / 'cache', quiet=True)
        again['wall_s'] = time.time() - t
    print(f"site build: first {first['wall_s']:.0f} s, second (cached) {again['wall_s']:.0f} s")
    return tmp / '_site', first, again


@needs_renderer
def test_build_report(site):
    out, report, _ = site
    assert report['renderer'] in ('quarto', 'smalldocs') and (out / MARKER).is_file()
    assert 'index.html' in report['pages'] and 'results/index.html' in report['pages']
    for s in STUDIES: assert f'results/{s}.html' in report['pages']
    assert sorted(report['executed']) == sorted(LESSON_PAGES + [f'results/{s}' for s in (*STUDIES, 'index')])
    mine = [e for e in report['errors'] if e.startswith(('results/', *LESSON_PAGES))]
    assert not mine, f'the executed lessons and the results pages must run without errors: {mine}'


@needs_renderer
def test_second_build_executes_nothing(site):
    out, first, again = site
    assert again['executed'] == [] and sorted(again['cached']) == sorted(first['executed'] + first['cached'])
    assert again['pages'] == first['pages'] and again['run_pages'] == first['run_pages']
    assert again['wall_s'] < first['wall_s'], (again['seconds'], first['seconds'])


@needs_renderer
def test_no_page_loads_from_another_host(site):
    out, report, _ = site
    bad = {}
    for f in out.rglob('*.html'):
        ext = Page(f.read_text(encoding='utf-8')).external()
        if ext: bad[str(f.relative_to(out))] = ext[:3]
    assert not bad, f'pages that load from another host: {dict(list(bad.items())[:5])}'
    css = [str(f.relative_to(out)) for f in out.rglob('*.css') if re.search(r'@import\s+url\(\s*["\']?(https?:)?//', f.read_text(errors='replace'))]
    assert not css, f'style sheets that import from another host: {css}'


@needs_browser
@needs_renderer
@pytest.mark.skipif(find_katex() is None, reason="no KaTeX (Debian's libjs-katex, `make katex`): formulas stay TeX")
def test_math_is_rendered(site):
    out, _, _ = site
    assert (out / 'site_libs' / 'katex' / 'katex.min.js').is_file()
    page = open_page(out, 'methods/clel/21_ebm.html', 'lesson_20_ebm_math', height=2400)
    assert page.katex >= 10, f'KaTeX rendered {page.katex} formulas on 21_ebm'
    src = (out / 'methods' / 'clel' / '21_ebm.html').read_text(encoding='utf-8')
    assert page.katex >= src.count('\\(') // 2, 'most inline formulas of the page are rendered'


@needs_browser
@needs_renderer
def test_ickd_demonstration_has_its_figure(site):
    out, _, _ = site
    page = open_page(out, 'methods/ickd/12_ickd.html', 'lesson_11_ickd', height=9000)
    heads = page.heads()
    assert 'Enriched versus vanilla teacher' in heads, heads
    figs = page.figures(after='Enriched versus vanilla teacher', before='Try this' if 'Try this' in heads else None)
    assert figs, "the slow cell's figure (enriched, vanilla and ungated teachers) is on the page"
    text = ' '.join(page.text)
    assert 'vanilla_teacher' in text and "from the sweep's runs" in text, 'the demonstration read the smoke runs'


@pytest.fixture(scope='module')
def results_pages(site):
    "Each study's results page, opened once in the browser."
    out, _, _ = site
    return {s: open_page(out, f'results/{s}.html', f'results_{s}', height=5200) for s in STUDIES}


@needs_browser
@needs_renderer
def test_results_and_run_pages(site, runs_dir, results_pages):
    out, _, _ = site
    overview = open_page(out, 'results/index.html', 'results_index', height=1600)
    assert 'Results' in overview.heads()
    for s in STUDIES: assert any(h.endswith(f'{s}.html') for h in overview.links), f'overview links to {s}'
    for s, page in results_pages.items():
        assert page.figures(), f'{s}: the results page shows figures'
        run_links = [h for h in page.links if re.match(rf'\.\./runs/{s}/[^/]+\.html$', h)]
        n_nb = len(list((runs_dir / s).glob('*/run.ipynb')))
        assert len(run_links) == n_nb > 0, f'{s}: {len(run_links)} run links for {n_nb} run notebooks'
        for h in run_links: assert (out / 'results' / h).resolve().is_file(), f'{s}: link {h} leads nowhere'
    run_page = sorted((out / 'runs' / 'ickd_balance').glob('*.html'))[0]
    run = open_page(out, str(run_page.relative_to(out)), 'run_notebook_ickd', height=2400)
    assert run.headings and run.figures(), "a run page shows the run's learning curves"
    clel = sorted((out / 'runs' / 'clel_framework').glob('*.html'))[0]
    assert len(open_page(out, str(clel.relative_to(out)), 'run_notebook_clel', height=2400).figures()) >= 2, \
        'a CLEL run page shows its energy curves and its samples'


@needs_browser
@needs_renderer
def test_results_pages_say_smoke(results_pages):
    "Smoke numbers mean nothing: each results page opens with the smoke banner that says so."
    for s, page in results_pages.items():
        text = ' '.join(' '.join(page.text).split())
        assert 'SMOKE PROFILE' in text and 'numbers mean nothing' in text, f'{s}: no smoke banner on the page'


@needs_browser
@needs_renderer
def test_results_pages_open_with_the_answer(results_pages):
    "Each results page opens with its verdicts and the forest plot of the differences, before the detailed findings."
    for s, page in results_pages.items():
        h2 = [t for tag, t, _ in page.headings if tag == 'h2' and t != 'On this page']   # the table of contents is not content
        assert h2 and h2[0] == 'The answer at a glance', f'{s}: the page opens with {h2[:2]}'
        assert h2.index('What the data show') > 0, f'{s}: the detailed findings come after the verdicts'
        assert len(page.figures(after=h2[0], before=h2[1])) == 1, f'{s}: no differences figure beside the verdicts'
        text = ' '.join(' '.join(page.text).split())
        assert 'Holm' in text, f'{s}: the page does not name its correction for multiple comparisons'


@pytest.mark.slow
@needs_renderer
def test_site_before_any_sweep(tmp_path):
    "Without runs the results pages say which commands produce them (no empty figures)."
    out = tmp_path / '_site'
    r = build_site(tmp_path / 'no_runs_yet', out, execute_lessons=False, workers=2, quiet=True, cache_dir=False)
    html = (out / 'results' / 'ickd_margin.html').read_text()
    assert 'No runs of' in html and 'contrastive_ablations sweep plans/ickd_margin.yaml' in html
    assert 'data:image/png' not in html and r['run_pages'] == 0
    if CHROMIUM:
        page = open_page(out, 'results/ickd_margin.html', 'results_before_sweep', height=1200)
        assert not page.figures()


def test_out_dir_safety(tmp_path):
    "build_site never deletes a folder it did not write."
    keep = tmp_path / 'important'
    keep.mkdir(); (keep / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='out_dir'):
        build_site(tmp_path / 'runs', keep)
    assert (keep / 'notes.txt').read_text() == 'mine'


@needs_renderer
def test_results_csv_beside_pages(site):
    "Each results page has its summary as `results/<study>.csv`, long format, intervals inside the metric's range."
    import pandas as pd
    out, _, _ = site
    for s in STUDIES:
        df = pd.read_csv(out/'results'/f'{s}.csv')
        assert {'variant', 'metric', 'n', 'mean', 'ci_low', 'ci_high'} <= set(df.columns), s
        assert len(df) and (df['n'] >= 0).all(), s
        lo, hi = df['range_lo'].fillna(-float('inf')), df['range_hi'].fillna(float('inf'))
        for c in ('mean', 'ci_low', 'ci_high'):
            v = df[c].dropna()
            assert ((v >= lo[v.index] - 1e-9) & (v <= hi[v.index] + 1e-9)).all(), f'{s}: {c} outside the range'


# ---- failures, the lesson cache and the output folder, on a tiny notebook tree (seconds, no smoke sweep) ----

import errno
import json
import os
import sys

import nbformat

import contrastive_ablations.engine.site as site_mod
from contrastive_ablations.foundation.cache import entries as cache_entries
from contrastive_ablations.engine.site import cli_site

GOOD = 'print("good lesson ran")'


def tiny_tree(root: Path, good=GOOD, bad='assert True') -> Path:
    "A repository with three notebooks (index, good, bad) and the project's settings.ini."
    (root / 'nbs').mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / 'settings.ini', root / 'settings.ini')
    (root / 'nbs' / '_quarto.yml').write_text('project:\n  type: website\n  output-dir: _docs\nwebsite:\n  title: "tiny"\n'
                                              '  sidebar:\n    contents:\n      - index.ipynb\n      - good.ipynb\n      - bad.ipynb\n')
    for name, code in (('index', 'print("home")'), ('good', good), ('bad', bad)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f'# {name.title()}\n> one line'), nbformat.v4.new_code_cell(code)]
        nbformat.write(nb, root / 'nbs' / f'{name}.ipynb')
    return root


def tiny_build(root: Path, **kw) -> dict:
    kw = {'lessons': ['good.ipynb', 'bad.ipynb'], 'cache_dir': root / 'cache', 'quiet': True, **kw}
    return build_site(kw.pop('runs', root / 'runs'), kw.pop('out', root / '_site'), root=root, **kw)


def cli(root: Path, *args, runs=None):
    "`python -m contrastive_ablations site` in the tiny repository."
    return subprocess.run([sys.executable, '-m', 'contrastive_ablations', 'site', '--runs', str(runs or root / 'runs'),
                           '--cache', str(root / 'cache'), *args], cwd=root, capture_output=True, text=True, timeout=600)


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    "A cache folder of the test's own for the artefacts the lessons read."
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path / 'artefacts'))
    return tmp_path / 'artefacts'


@needs_renderer
def test_failed_lesson_fails_the_build_and_is_not_cached(tmp_path, private_cache):
    "Every other page is built, the exit status says it failed, no page shows a traceback, and nothing failed is cached."
    root = tiny_tree(tmp_path / 'repo')
    assert not tiny_build(root).get('failed')
    good_page = (root / '_site' / 'bad.html').read_text()
    tiny_tree(root, good='print("good lesson, second edition")', bad='x = 0.1\nassert x > 0.5, "accuracy too low"')
    p = cli(root, '--lessons', 'good.ipynb', 'bad.ipynb')
    assert p.returncode != 0, p.stdout + p.stderr
    assert "bad: cell 1, line 2 ('assert x > 0.5, \"accuracy too low\"'): AssertionError: accuracy too low" in p.stderr, p.stderr
    assert 'Traceback' not in p.stderr, p.stderr
    site = root / '_site'
    assert 'good lesson, second edition' in (site / 'good.html').read_text(), 'every other page is built'
    kept = (site / 'bad.html').read_text()
    assert 'failed in the latest build' in kept and 'accuracy too low' in kept, 'the previous good page, marked'
    assert kept.replace(re.search(r'<div class="site-build-failed".*?</div>\n?', kept, re.S).group(0), '') == good_page
    for f in site.rglob('*.html'): assert 'Traceback' not in f.read_text(), f
    assert [e.spec['notebook'] for e in cache_entries('lesson_good', root=root / 'cache')] == ['good'], 'the good one is cached'
    cached = [f for f in (root / 'cache').glob('lesson_*/**/*') if f.is_file() and 'accuracy too low' in f.read_text(errors='replace')]
    assert not cached, f'a failed execution was cached: {cached}'
    # a site that never had a good page of it: a short page saying what failed
    r = tiny_build(root, out=tmp_path / 'fresh')
    assert list(r['failed']) == ['bad'] and r['kept'] == {} and 'bad' in r['executed'], r
    fresh = (tmp_path / 'fresh' / 'bad.html').read_text()
    assert 'could not be built' in fresh and 'AssertionError: accuracy too low' in fresh and 'Traceback' not in fresh
    # fixed: the next build succeeds and the notes are gone
    tiny_tree(root, good='print("good lesson, second edition")')
    p = cli(root, '--lessons', 'good.ipynb', 'bad.ipynb')
    assert p.returncode == 0, p.stderr
    assert 'site-build-failed' not in (site / 'bad.html').read_text()


@needs_renderer
def test_lesson_cache_is_keyed_by_cached_artefacts(tmp_path, private_cache, monkeypatch):
    "A lesson executes again when an artefact it may read (an FID extractor) changes, not after caching its own."
    monkeypatch.setattr(site_mod, 'package_fingerprint', lambda: 'the package')   # only the artefacts change here
    makes = ('import os, pathlib\n'
             'p = pathlib.Path(os.environ["CONTRASTIVE_ABLATIONS_CACHE"]) / "fid_extractors" / "made_by_lesson.json"\n'
             'p.parent.mkdir(parents=True, exist_ok=True)\n'
             'if not p.exists(): p.write_text("{}")\n'
             'print("good lesson ran")')
    root = tiny_tree(tmp_path / 'repo', good=makes)
    first, again = tiny_build(root), tiny_build(root)
    assert sorted(first['executed']) == ['bad', 'good'] and again['executed'] == [], (first, again)
    entry = private_cache / 'fid_extractors' / '0123456789abcdef0123'   # an entry of the cache module, e.g. retrained
    entry.mkdir()
    (entry / 'entry.json').write_text('{"kind": "fid_extractors", "created": 1}')
    third = tiny_build(root)
    assert sorted(third['executed']) == ['bad', 'good'], third
    os.utime(entry / 'entry.json')   # the cache module marks an entry used each time it is read: not a change
    assert tiny_build(root)['executed'] == []


@needs_renderer
def test_symlink_loop_in_runs_keeps_the_site_and_warns(tmp_path, private_cache, capsys):
    from fixtures import write_study
    root = tiny_tree(tmp_path / 'repo')
    runs = tmp_path / 'runs'
    write_study(runs, seeds=2, broken=False)
    tiny_build(root, runs=runs, lessons=['good.ipynb'])
    study = runs / 'ickd_margin'
    (study / 'loop').symlink_to('.')
    (study / 'self').symlink_to(study / 'self')
    run0 = next(d for d in sorted(study.iterdir()) if d.is_dir() and not d.is_symlink())
    (run0 / 'up').symlink_to('..')
    r = tiny_build(root, runs=runs, lessons=['good.ipynb'], quiet=False)
    out = capsys.readouterr().out
    assert r['failed'] == {} and 'results/ickd_margin.html' in r['pages'], r
    assert (root / '_site' / 'results' / 'ickd_margin.html').is_file() and (root / '_site' / MARKER).is_file()
    for name in ('loop', 'self', 'up'): assert re.search(rf'WARNING: runs folder: skipped \S*/{name}\b', out), out


def test_out_foreign_or_unwritable_is_refused(tmp_path):
    "`site --out` a folder it did not write, a file or an unwritable place: exit 2, a message, no traceback, nothing touched."
    root = tiny_tree(tmp_path / 'repo')
    foreign = tmp_path / 'important'
    foreign.mkdir(); (foreign / 'notes.txt').write_text('mine')
    a_file = tmp_path / 'a_file'
    a_file.write_text('mine')
    targets = [foreign, a_file, Path('/proc/contrastive_ablations_site'), a_file / 'site']
    if os.geteuid() != 0:   # root writes anywhere: the read-only folder test needs another user
        ro = tmp_path / 'read_only'; ro.mkdir(); ro.chmod(0o555); targets.append(ro / 'site')
    for out in targets:
        t = time.time()
        p = cli(root, '--out', str(out))
        assert p.returncode == 2, (out, p.returncode, p.stderr)
        assert p.stderr.startswith('error: --out:') and "parameter 'out_dir'" in p.stderr and 'Traceback' not in p.stderr, (out, p.stderr)
        assert time.time() - t < 60, 'refused before any work'
    p = cli(root, '--out', str(tmp_path / 'new_site'), '--build-dir', str(foreign))   # the working copy is deleted at the next build
    assert p.returncode == 2 and "parameter 'build_dir'" in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert (foreign / 'notes.txt').read_text() == 'mine' and sorted(os.listdir(foreign)) == ['notes.txt']
    assert a_file.read_text() == 'mine'


@needs_renderer
def test_failed_build_leaves_the_old_site_byte_identical(tmp_path, private_cache, monkeypatch, capsys):
    "A full disk (or Ctrl-C) during a build: a message and an exit status, and the old site exactly as it was."
    root = tiny_tree(tmp_path / 'repo')
    tiny_build(root)
    site = root / '_site'
    before = snapshot(site)
    def full_disk(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(site_mod, 'make_offline', full_disk)
    monkeypatch.chdir(root)
    tiny_tree(root, good='print("a newer good lesson")')
    status = cli_site(['--runs', str(root / 'runs'), '--cache', str(root / 'cache'), '--lessons', 'good.ipynb', 'bad.ipynb'])
    err = capsys.readouterr().err
    assert status == 1 and 'No space left on device' in err and 'is as it was before' in err and 'Traceback' not in err, err
    assert snapshot(site) == before
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(site_mod, 'make_offline', interrupted)
    with pytest.raises(KeyboardInterrupt): tiny_build(root)
    assert snapshot(site) == before
    assert [p.name for p in root.iterdir() if p.name.startswith('._site.')] == [], 'no half-built folder is left'


@needs_renderer
def test_runs_parquet_beside_pages(site, runs_dir):
    "The site has every run of every study as results/runs.parquet (one row per study, value, seed and metric)."
    import pandas as pd
    from contrastive_ablations.engine.rundata import load_study
    out, report, _ = site
    t = pd.read_parquet(out/'results'/'runs.parquet')
    assert report['runs_table'] == 'results/runs.parquet'
    for d in find_studies(runs_dir):
        assert set(load_study(d).runs.run_id) <= set(t[t.study == d.name].run_id), d.name   # (+ runs a study leaves out)


@needs_renderer
def test_site_caches_are_entries_of_the_cache_module(site, runs_dir):
    "One entry per executed notebook, the latest nbdev processing and one page per run notebook: entries of the cache module under the site's root."
    out, first, again = site
    contents = {p.read_bytes() for p in runs_dir.glob('*/*/run.ipynb')}   # a run shared by two studies is one page
    root = out.parent / 'cache'
    for name in [n for n in first['executed'] if n not in first['failed']]:
        assert [e.spec['notebook'] for e in cache_entries(site_mod._lesson_kind(name), root=root)] == [name], name
    assert len(cache_entries('site_proc', root=root)) == 1
    assert len(cache_entries('run_pages', root=root)) == len(contents) > 0 and first['run_pages'] == again['run_pages'] >= len(contents)


def test_run_pages_cache_evicts_gone_runs_and_never_stores_a_broken_page(tmp_path):
    runs, cache_root = tmp_path / 'runs', tmp_path / 'cache'
    for run in ('r1', 'r2'):
        nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_markdown_cell(f'# run {run}')]
        (runs / 'study' / run).mkdir(parents=True); nbformat.write(nb, runs / 'study' / run / 'run.ipynb')
    assert site_mod.convert_run_notebooks(runs, tmp_path / 'a', cache_root) == 2
    assert len(cache_entries('run_pages', root=cache_root)) == 2 and 'run r2' in (tmp_path / 'a' / 'study' / 'r2.html').read_text()
    (runs / 'study' / 'r2' / 'run.ipynb').write_text('{"cells": [')   # redone, half-written
    assert site_mod.convert_run_notebooks(runs, tmp_path / 'b', cache_root) == 2
    assert 'could not be rendered' in (tmp_path / 'b' / 'study' / 'r2.html').read_text()
    left = cache_entries('run_pages', root=cache_root)
    assert len(left) == 1 and 'run r1' in (left[0].path / 'page.html').read_text(), 'the page of the old r2 is evicted, the broken one never stored'


@needs_renderer
def test_no_cache_executes_everything_and_stores_nothing(tmp_path, private_cache):
    root = tiny_tree(tmp_path / 'repo')
    tiny_build(root)
    before = snapshot(root / 'cache')
    r = tiny_build(root, cache_dir=False)
    assert sorted(r['executed']) == ['bad', 'good'] and r['cached'] == [] and not r['failed'], r
    assert snapshot(root / 'cache') == before and not (root / '.site_cache').exists()


@needs_renderer
def test_a_study_without_a_page_gets_one_from_its_plan_and_a_sidebar_entry(tmp_path, private_cache):
    "The tiny tree has no results pages: the build makes one per study found, headed by its plan, listed in the sidebar."
    from fixtures import write_study
    root = tiny_tree(tmp_path / 'repo')
    (root / 'nbs' / '_quarto.yml').write_text((root / 'nbs' / '_quarto.yml').read_text()
                                              + '      - section: "Results"\n        contents:\n          - results/index.ipynb\n')
    runs = tmp_path / 'runs'
    write_study(runs, 'ickd_balance', seeds=2, broken=False, plan_changes={'title': 'Balance <b>λ</b>', 'description': 'Vary λ.'})
    r = tiny_build(root, runs=runs, lessons=['good.ipynb'])
    assert r['failed'] == {} and 'results/ickd_balance.html' in r['pages'], r
    page = Page((root / '_site' / 'results' / 'ickd_balance.html').read_text())
    text = ' '.join(page.text)
    assert 'Results: Balance <b>λ</b>' in page.heads() and 'Vary λ.' in text, page.heads()   # the plan's words, as text
    assert 'The study varies lam of the intra-class contrastive knowledge distillation (ICKD) experiment' in ' '.join(text.split())
    home = (root / '_site' / 'good.html').read_text()
    assert 'results/ickd_balance.html' in home   # the sidebar of every page lists it

"""The documentation site, built from a smoke sweep and opened offline in a real (headless) browser.

A smoke-profile sweep of the four plans runs first (or $CONTRASTIVE_ABLATIONS_TEST_RUNS names a runs directory
to use instead, e.g. `runs/smoke` from `make smoke`). The site is built from it with three lessons executed
completely, slow cells included: 11_ickd (its slow cell reads the sweep's runs), 20_ebm (mostly formulas) and
40_report. Chromium opens the pages with every host name unresolvable, so nothing can come from the network,
and the checks read the DOM after JavaScript ran: formulas rendered by KaTeX, the figure of 11_ickd's slow
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

from contrastive_ablations.report import find_studies
from contrastive_ablations.site import build_site, renderer_available, find_katex, MARKER

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / 'test-artifacts' / 'site'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or (
    '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
STUDIES = ('ickd_margin', 'ickd_balance', 'clel_framework', 'clel_norm_direction')
LESSONS = ['11_ickd.ipynb', '20_ebm.ipynb', '40_report.ipynb']

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
def runs_dir(tmp_path_factory):
    "Real smoke runs: $CONTRASTIVE_ABLATIONS_TEST_RUNS, else a smoke sweep of the four plans (one seed)."
    env = os.environ.get('CONTRASTIVE_ABLATIONS_TEST_RUNS')
    if env:
        assert find_studies(env), f'$CONTRASTIVE_ABLATIONS_TEST_RUNS={env} holds no study'
        return Path(env)
    from contrastive_ablations.sweep import sweep
    d = tmp_path_factory.mktemp('smoke_runs')
    res = sweep([ROOT / 'plans' / f'{s}.yaml' for s in STUDIES], out=d, profile='smoke', seeds=1, workers=2)
    assert res.ok, f'the smoke sweep failed: {res}'
    return d


@pytest.fixture(scope='module')
def site(runs_dir, tmp_path_factory):
    "The site built twice from the runs with one cache: the first build and the second (nothing changed)."
    tmp = tmp_path_factory.mktemp('site')
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
    assert sorted(report['executed']) == sorted([l[:-6] for l in LESSONS] + [f'results/{s}' for s in (*STUDIES, 'index')])
    mine = [e for e in report['errors'] if e.startswith(('results/', '11_ickd', '20_ebm', '40_report'))]
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
    page = open_page(out, '20_ebm.html', 'lesson_20_ebm_math', height=2400)
    assert page.katex >= 10, f'KaTeX rendered {page.katex} formulas on 20_ebm'
    src = (out / '20_ebm.html').read_text(encoding='utf-8')
    assert page.katex >= src.count('\\(') // 2, 'most inline formulas of the page are rendered'


@needs_browser
@needs_renderer
def test_ickd_demonstration_has_its_figure(site):
    out, _, _ = site
    page = open_page(out, '11_ickd.html', 'lesson_11_ickd', height=9000)
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

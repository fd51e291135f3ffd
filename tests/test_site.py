"""The documentation site, built and opened in a real (headless) browser.

The site is built from a runs directory and every page a reader starts from is opened in headless
Chromium: the home page, a method lesson, the results overview and each study's results page. The test
checks the DOM (headings, figures as embedded PNGs, links to the run notebooks that exist in the site) and
saves screenshots to test-artifacts/site/ (look at them: they are the test's evidence).

Runs directory: $CONTRASTIVE_ABLATIONS_TEST_RUNS when set (e.g. `runs/smoke` from `make smoke`: real
smoke-profile sweeps); otherwise a SYNTHETIC, contract-conformant runs directory written by the demo
fixture `make_demo_runs` (its pages carry a "SYNTHETIC DEMO DATA" banner, checked below). Synthetic numbers
exist only inside this test's temporary folder.
"""
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from contrastive_ablations.report import DEMO_PLANS, make_demo_runs, find_studies
from contrastive_ablations.site import build_site, renderer_available, MARKER

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / 'test-artifacts' / 'site'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or (
    '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
STUDIES = tuple(DEMO_PLANS)  # ickd_margin, ickd_balance, clel_framework, clel_norm_direction

needs_browser = pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed '
                                   '(Debian: apt-get install chromium, or `make browser`)')
needs_renderer = pytest.mark.skipif(not renderer_available(), reason='neither quarto nor smalldocs is available')


class Page(HTMLParser):
    "What the checks need from a page: headings, images (with data size), links."
    def __init__(self, html):
        super().__init__()
        self.headings, self.imgs, self.links, self._h = [], [], [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ('h1', 'h2', 'h3'): self._h = [tag, '']
        if tag == 'img': self.imgs.append(a.get('src') or '')
        if tag == 'a' and a.get('href'): self.links.append(a['href'])

    def handle_data(self, data):
        if self._h is not None: self._h[1] += data

    def handle_endtag(self, tag):
        if self._h is not None and tag == self._h[0]:
            self.headings.append((tag, ' '.join(self._h[1].split()))); self._h = None

    def figures(self, min_bytes=2000):
        "Embedded PNG images large enough to be plots (not icons)."
        return [s for s in self.imgs if s.startswith('data:image/png;base64,') and len(s) > min_bytes]


def chromium(url, *args, timeout=120):
    "Run headless Chromium on `url` with extra `args`; returns stdout (the DOM with --dump-dom)."
    prof = tempfile.mkdtemp(prefix='chromium_')
    try:
        p = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                            '--disable-background-networking', '--disable-component-update', '--disable-sync',
                            '--hide-scrollbars', f'--user-data-dir={prof}', *args, url],
                           capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(prof, ignore_errors=True)
    return p.stdout


def open_page(site: Path, rel: str, shot: str, height=2400) -> Page:
    "Load a page in Chromium, save a screenshot into test-artifacts/site/, return its parsed DOM."
    f = site / rel
    assert f.is_file(), f'{rel} was not built; pages: {sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))[:40]}'
    url = f.as_uri()
    dom = chromium(url, '--dump-dom', '--virtual-time-budget=3000')
    assert '<html' in dom.lower(), f'Chromium returned no DOM for {rel}'
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f'{shot}.png'
    png.unlink(missing_ok=True)
    chromium(url, f'--screenshot={png}', f'--window-size=1280,{height}', '--virtual-time-budget=3000')
    assert png.is_file() and png.stat().st_size > 10_000, f'no screenshot of {rel}'
    return Page(dom)


@pytest.fixture(scope='module')
def runs_dir(tmp_path_factory):
    "Real runs from $CONTRASTIVE_ABLATIONS_TEST_RUNS, else a synthetic runs directory (demo fixture)."
    env = os.environ.get('CONTRASTIVE_ABLATIONS_TEST_RUNS')
    if env:
        assert find_studies(env), f'$CONTRASTIVE_ABLATIONS_TEST_RUNS={env} holds no study'
        return Path(env), False
    d = tmp_path_factory.mktemp('synthetic_runs')
    make_demo_runs(d, studies=STUDIES, seeds=2)  # SYNTHETIC numbers, for this test only
    return d, True


@pytest.fixture(scope='module')
def site(runs_dir, tmp_path_factory):
    "The site built from the runs (results pages executed; one lesson executed to keep the test short)."
    runs, _ = runs_dir
    out = tmp_path_factory.mktemp('site') / '_site'
    report = build_site(runs, out, lessons=['40_report.ipynb'], workers=2)
    return out, report


@needs_renderer
def test_build_report(site):
    out, report = site
    assert report['renderer'] in ('quarto', 'smalldocs') and (out / MARKER).is_file()
    assert 'index.html' in report['pages'] and 'results/index.html' in report['pages']
    assert report['seconds']['total'] > 0
    mine = [e for e in report['errors'] if e.startswith(('results/', '40_report'))]
    assert not mine, f'results pages and the report lesson must execute without errors: {mine}'
    for s in STUDIES: assert f'results/{s}.html' in report['pages']


@needs_browser
@needs_renderer
def test_home_and_lesson_pages(site):
    out, _ = site
    home = open_page(out, 'index.html', 'home', height=1400)
    assert any(tag == 'h1' for tag, _ in home.headings), home.headings
    assert any(h.endswith('results/index.html') for h in home.links), 'the navbar links to the results'
    lesson = open_page(out, '40_report.html', 'lesson_40_report', height=3000)
    assert ('h1', 'Reading an ablation study') in lesson.headings, lesson.headings[:5]
    assert len(lesson.figures()) >= 4, f'the executed lesson shows its figures, found {len(lesson.figures())}'
    assert any(t == 'Seed statistics' for _, t in lesson.headings)


@needs_browser
@needs_renderer
def test_results_pages(site, runs_dir):
    out, _ = site
    runs, synthetic = runs_dir
    overview = open_page(out, 'results/index.html', 'results_index', height=1600)
    assert ('h1', 'Results') in overview.headings
    for s in STUDIES: assert any(h.endswith(f'{s}.html') for h in overview.links), f'overview links to {s}'
    for s in STUDIES:
        page = open_page(out, f'results/{s}.html', f'results_{s}', height=5200)
        heads = [t for _, t in page.headings]
        for want in ('What the data show', 'Summary', 'Failed and diverged runs', 'All runs'):
            assert want in heads, f'{s}: heading {want!r} missing; found {heads}'
        expected = ['Top-1 accuracy', 'Learning curves', 'Stability and convergence', 'Selected anchors'] \
            if s.startswith('ickd') else ['FID and AUROC', 'Energy curves', 'Samples']
        for want in expected: assert want in heads, f'{s}: figure section {want!r} missing; found {heads}'
        assert len(page.figures()) >= len(expected), f'{s}: {len(page.figures())} figures for {len(expected)} sections'
        run_links = [h for h in page.links if re.match(rf'\.\./runs/{s}/[^/]+\.html$', h)]
        n_nb = len(list((runs / s).glob('*/run.ipynb')))
        assert len(run_links) == n_nb > 0, f'{s}: {len(run_links)} run links for {n_nb} run notebooks'
        for h in run_links: assert (out / 'results' / h).resolve().is_file(), f'{s}: link {h} leads nowhere'
        if synthetic:
            html = (out / 'results' / f'{s}.html').read_text()
            assert 'SYNTHETIC DEMO DATA' in html, 'synthetic runs must be labelled as such on the page'
    # a run notebook itself opens
    first = next(iter(sorted((out / 'runs').rglob('*.html'))))
    run = open_page(out, str(first.relative_to(out)), 'run_notebook', height=1200)
    assert run.headings, 'the rendered run notebook has content'


@pytest.mark.slow
@needs_renderer
def test_site_before_any_sweep(tmp_path):
    "Without runs the results pages say which commands produce them (no empty figures)."
    out = tmp_path / '_site'
    r = build_site(tmp_path / 'no_runs_yet', out, execute_lessons=False, workers=2, quiet=True)
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

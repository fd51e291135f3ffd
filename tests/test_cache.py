"Tests for contrastive_ablations.foundation.cache: stable keys, atomic store, lock, validation on store and on load, eviction."
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contrastive_ablations.foundation import cache


@pytest.fixture
def root(monkeypatch, tmp_path):
    "An empty cache of its own."
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


class Counter:
    "A toy artefact: a list of n numbers stored as text; counts its computations."
    def __init__(self): self.calls = 0
    def compute(self, n):
        def f():
            self.calls += 1
            return list(range(n))
        return f
    @staticmethod
    def save(v, folder): (folder / 'values.txt').write_text(' '.join(map(str, v)))
    @staticmethod
    def load(folder): return [int(t) for t in (folder / 'values.txt').read_text().split()]
    @staticmethod
    def valid(n): return lambda v: None if len(v) == n else f'{len(v)} values, expected {n}'

    def get(self, n, kind='toy', keep=cache.DEFAULT_KEEP, compute=True):
        return cache.get_or_compute(kind, {'n': n}, self.compute(n) if compute else None, self.save, self.load,
                                    self.valid(n), keep=keep)


def test_key_is_stable_across_processes_and_orders():
    spec = {'b': [1, 2.5, 'x'], 'a': {'z': None, 'y': True}}
    code = ("from contrastive_ablations.foundation.cache import cache_key; "
            "print(cache_key({'a': {'y': True, 'z': None}, 'b': (1, 2.5, 'x')}))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == cache.cache_key(spec) and len(out) == 20
    assert cache.cache_key({'a': 1}) != cache.cache_key({'a': 2}) != cache.cache_key({'a': '2'})


@pytest.mark.parametrize('bad,match', [({'f': object()}, r"spec\.f is a object"), ({'x': float('inf')}, 'not finite'),
                                       ({1: 2}, 'not a string'), ([1], 'must be a dict')])
def test_key_refuses_what_is_not_plain_data(bad, match):
    with pytest.raises(TypeError, match=match): cache.cache_key(bad)


def test_source_hash_follows_the_code():
    def f(x): return x + 1
    def g(x): return x + 2
    assert cache.source_hash(f) == cache.source_hash(f) != cache.source_hash(g)
    with pytest.raises(TypeError, match='no source code'): cache.source_hash(len)


def test_kind_names(root):
    for bad in ['', '../x', 'A', 'a/b', '.hidden', 'x' * 65]:
        with pytest.raises(ValueError, match='cache kind'): cache.kind_dir(bad)
    assert cache.kind_dir('fid_extractors') == root / 'fid_extractors'


def test_compute_once_then_read(root):
    c = Counter()
    assert c.get(3) == [0, 1, 2] and c.get(3) == [0, 1, 2] and c.calls == 1
    path = cache.entry_path('toy', {'n': 3})
    assert json.loads((path / cache.ENTRY_FILE).read_text())['spec'] == {'n': 3}
    assert [e.path for e in cache.entries('toy')] == [path]


def test_invalid_entry_is_recomputed_with_one_log_line(root, caplog):
    c = Counter(); c.get(3)
    path = cache.entry_path('toy', {'n': 3})
    for damage in [lambda: (path / 'values.txt').write_text('0 1'),      # fails the validator
                   lambda: (path / 'values.txt').write_text('x y z'),    # fails to load
                   lambda: (path / 'values.txt').unlink(),
                   lambda: (path / cache.ENTRY_FILE).unlink()]:          # incomplete entry
        caplog.clear()
        damage()
        with caplog.at_level(logging.WARNING, logger='contrastive_ablations.foundation.cache'):
            assert c.get(3) == [0, 1, 2]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and str(path) in lines[0] and 'computing it again' in lines[0], lines
    assert c.calls == 5 and c.get(3) == [0, 1, 2] and c.calls == 5


def test_failing_item_is_never_stored(root):
    with pytest.raises(cache.CacheError, match='failed its check and was not stored: 1 values, expected 5'):
        cache.get_or_compute('toy', {'n': 5}, lambda: [7], Counter.save, Counter.load, Counter.valid(5))
    assert not cache.entry_path('toy', {'n': 5}).exists() and not cache.entries('toy')
    # a validator that raises is a failed check too
    def boom(v): raise ValueError('bad value')
    with pytest.raises(cache.CacheError, match='ValueError: bad value'):
        cache.get_or_compute('toy', {'n': 6}, lambda: [1], Counter.save, Counter.load, boom)
    # a save that writes something the validator refuses when read back: removed, error
    with pytest.raises(cache.CacheError, match='read back and was removed'):
        cache.get_or_compute('toy', {'n': 2}, lambda: [0, 1], lambda v, f: (f / 'values.txt').write_text('0'),
                             Counter.load, Counter.valid(2))
    assert not cache.entry_path('toy', {'n': 2}).exists()


def test_store_is_atomic(root):
    "A save that dies half-way leaves neither an entry nor a temporary folder behind; the old entry is untouched."
    def dies(v, folder):
        (folder / 'values.txt').write_text('0')
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError, match='No space'):
        cache.get_or_compute('toy', {'n': 1}, lambda: [0], dies, Counter.load, Counter.valid(1))
    folder = cache.kind_dir('toy')
    assert not cache.entry_path('toy', {'n': 1}).exists() and not list(folder.glob('.*.tmp'))


def test_read_only(root):
    c = Counter()
    with pytest.raises(cache.CacheMiss, match='no cached toy entry'): c.get(3, compute=False)
    assert isinstance(cache.CacheMiss('x'), FileNotFoundError)
    c.get(3)
    (cache.entry_path('toy', {'n': 3}) / 'values.txt').write_text('0')
    with pytest.raises(cache.CacheError, match='is invalid: 1 values, expected 3'): c.get(3, compute=False)
    assert c.calls == 1


def test_eviction_keeps_the_most_recently_used(root):
    c = Counter()
    for n in (1, 2, 3): c.get(n); time.sleep(0.02)
    c.get(1); time.sleep(0.02)                 # 1 is used again: now the most recent
    c.get(4, keep=2)                           # stores 4, then keeps 2 entries: 4 and 1
    assert sorted(len(c.load(e.path)) for e in cache.entries('toy')) == [1, 4]
    assert cache.prune('toy', 0) and not cache.entries('toy')
    with pytest.raises(ValueError, match="'keep'"): cache.prune('toy', -1)


def test_prune_skips_locked_entries(root):
    c = Counter(); c.get(1)
    with cache.file_lock(cache.kind_dir('toy') / f"{cache.cache_key({'n': 1})}.lock"):
        assert cache.prune('toy', 0) == [] and len(cache.entries('toy')) == 1


def test_concurrent_processes_compute_once(root, tmp_path):
    "Two processes asking for the same missing item: one computes, the other waits and reads it."
    script = tmp_path / 'worker.py'
    script.write_text(f'''
import time
from pathlib import Path
from contrastive_ablations.foundation import cache
log = Path({str(tmp_path / 'computed')!r})
def compute():
    with open(log, 'a') as f: f.write('x')
    time.sleep(1.0)
    return 'payload'
v = cache.get_or_compute('race', {{'x': 1}}, compute, lambda v, d: (d / 'v.txt').write_text(v),
                         lambda d: (d / 'v.txt').read_text(), lambda v: None if v == 'payload' else 'wrong')
print(v)
''')
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ['payload', 'payload'] and (tmp_path / 'computed').read_text() == 'x'


def test_folder_entries_hold_any_files(root):
    "An entry is a folder: several files (e.g. an executed notebook and its images) store and load together."
    def save(v, folder):
        (folder / 'page.html').write_text(v['html']); (folder / 'img').mkdir(); (folder / 'img' / 'a.png').write_bytes(v['png'])
    def load(folder): return {'html': (folder / 'page.html').read_text(), 'png': (folder / 'img' / 'a.png').read_bytes()}
    v = cache.get_or_compute('pages', {'nb': 'abc'}, lambda: {'html': '<p>', 'png': b'\x89PNG'}, save, load)
    assert v == {'html': '<p>', 'png': b'\x89PNG'} and (cache.entry_path('pages', {'nb': 'abc'}) / 'img' / 'a.png').is_file()


def test_another_root_holds_its_own_entries(root, tmp_path):
    "`root=` serves a cache folder of a caller's own (the site's .site_cache): same layout, nothing under the global root."
    other = tmp_path / 'site_cache'
    c = Counter()
    v = cache.get_or_compute('toy', {'n': 2}, c.compute(2), c.save, c.load, c.valid(2), keep=1, root=other)
    assert v == [0, 1] and cache.entry_path('toy', {'n': 2}, root=other) == other / 'toy' / cache.cache_key({'n': 2})
    assert cache.kind_dir('toy', root=other) == other / 'toy' and [e.key for e in cache.entries('toy', root=other)] == [cache.cache_key({'n': 2})]
    assert not cache.entries('toy'), 'nothing under the global root'
    assert cache.get_or_compute('toy', {'n': 2}, None, c.save, c.load, root=other) == [0, 1] and c.calls == 1
    with pytest.raises(cache.CacheMiss): cache.get_or_compute('toy', {'n': 2}, None, c.save, c.load)
    cache.get_or_compute('toy', {'n': 3}, c.compute(3), c.save, c.load, keep=1, root=other)   # evicts within its own root
    assert [len(c.load(e.path)) for e in cache.entries('toy', root=other)] == [3]
    assert cache.prune('toy', 0, root=other) and not cache.entries('toy', root=other)


def test_store_checks_writes_and_prunes_like_get_or_compute(root):
    "`store`: the value is checked before it is stored (refused: CacheError holding it), replaces the entry of its key, is read back checked, and the kind is pruned."
    c = Counter()
    assert cache.store('toy', {'n': 2}, [0, 1], c.save, c.load, c.valid(2)) == [0, 1]
    assert c.get(2) == [0, 1] and c.calls == 0, 'found by get_or_compute: the same key and layout'
    with pytest.raises(cache.CacheError, match='not stored: 1 values, expected 2') as e:
        cache.store('toy', {'n': 2, 'v': 2}, [9], c.save, c.load, c.valid(2))
    assert e.value.value == [9] and not cache.entry_path('toy', {'n': 2, 'v': 2}).exists()
    (cache.entry_path('toy', {'n': 2}) / 'values.txt').write_text('0')   # damaged: a store replaces it
    assert cache.store('toy', {'n': 2}, [5, 6], c.save, c.load, c.valid(2)) == [5, 6] and c.get(2) == [5, 6]
    with pytest.raises(cache.CacheError, match='read back and was removed'):
        cache.store('toy', {'n': 4}, [0, 1, 2, 3], lambda v, f: (f / 'values.txt').write_text('0'), c.load, c.valid(4))
    assert not cache.entry_path('toy', {'n': 4}).exists()
    time.sleep(0.02)
    cache.store('toy', {'n': 1}, [0], c.save, c.load, c.valid(1), keep=1)   # the most recent one stays
    assert [e.spec for e in cache.entries('toy')] == [{'n': 1}] and c.calls == 0
    with cache.file_lock(cache.kind_dir('toy') / f"{cache.cache_key({'n': 1})}.lock"):   # a store waits for the key's lock
        import threading
        t = threading.Thread(target=cache.store, args=('toy', {'n': 1}, [7], c.save, c.load))
        t.start(); t.join(0.5)
        assert t.is_alive() and c.load(cache.entry_path('toy', {'n': 1})) == [0]
    t.join(10)
    assert not t.is_alive() and c.load(cache.entry_path('toy', {'n': 1})) == [7]

"Tests for contrastive_ablations.methods.clel.metrics: AUROC, FID (torch-fidelity vs own formula), the registered extractor, OOD sets, errors."
import io
import json
import logging
import pickle

import numpy as np
import pytest
import torch
import torch_fidelity
from sklearn.metrics import roc_auc_score

import contrastive_ablations.methods.clel.metrics as cm
from contrastive_ablations.foundation import cache
from contrastive_ablations.foundation.core import ParameterError
from contrastive_ablations.foundation.data import load_dataset


@pytest.fixture(scope='module')
def fmnist():
    try: return load_dataset('fashion_mnist', 'train'), load_dataset('fashion_mnist', 'test')
    except FileNotFoundError as e: pytest.skip(f'Fashion-MNIST not available: {e}')


@pytest.fixture(scope='module')
def small_extractor(fmnist, tmp_path_factory):
    "A deliberately weak extractor trained in about a second: the tests check plumbing, not quality."
    tr, te = fmnist
    sub = tr.subset(600, seed=0)
    model, meta = cm.train_feature_cnn(sub.x, sub.y, te.x[:500], te.y[:500], widths=(4, 8), feature_dim=16,
                                       epochs=1, batch_size=50)
    return cm.save_classifier_extractor(model, meta, tmp_path_factory.mktemp('ext') / 'small.pt'), model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    "No Inception weights anywhere and a remembered failed download (no network access in tests)."
    monkeypatch.delenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', raising=False)
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(cm, '_INCEPTION_UNAVAILABLE', 'URLError: offline (test)')


# ---------------------------------------------------------------- AUROC
@pytest.mark.parametrize('seed', range(5))
def test_auroc_matches_sklearn(seed):
    r = np.random.default_rng(seed)
    n_in, n_out = r.integers(1, 300, 2)
    a, b = r.integers(0, 6, n_in).astype(float), r.normal(2, 2, n_out).round()  # many ties
    want = roc_auc_score(np.r_[np.ones(n_in), np.zeros(n_out)], np.r_[a, b])
    assert cm.auroc(a, b) == pytest.approx(want, abs=1e-12)
    assert cm.auroc(torch.tensor(a), torch.tensor(b)) == pytest.approx(want, abs=1e-12)


def test_auroc_extremes():
    assert cm.auroc([2, 3], [0, 1]) == 1.0
    assert cm.auroc([0, 1], [2, 3]) == 0.0
    assert cm.auroc([1, 1, 1], [1, 1]) == 0.5
    assert cm.auroc([np.inf, 1.0], [-np.inf, 0.0]) == 1.0
    r = np.random.default_rng(0)
    assert abs(cm.auroc(r.random(5000), r.random(5000)) - 0.5) < 0.02


@pytest.mark.parametrize('bad,name', [([], 'scores_in'), ([[1.0, 2.0]], 'scores_in'), ([1.0, np.nan], 'scores_in')])
def test_auroc_errors(bad, name):
    with pytest.raises(ParameterError, match=name): cm.auroc(bad, [1.0])
    with pytest.raises(ParameterError, match='scores_out'): cm.auroc([1.0], [1.0, np.nan])


def test_ood_aurocs_matches_auroc_and_ignores_batch_size():
    g = torch.Generator().manual_seed(0)
    x_in = torch.rand(40, 1, 28, 28, generator=g) * 0.5
    sets = {'bright': torch.rand(30, 1, 28, 28, generator=g) * 0.5 + 0.5, 'same': torch.rand(25, 1, 28, 28, generator=g) * 0.5}
    score = lambda x: -x.mean((1, 2, 3))
    res = cm.ood_aurocs(score, x_in, sets, batch_size=7)
    assert res['bright'] == 1.0
    assert res['same'] == pytest.approx(cm.auroc(score(x_in).numpy(), score(sets['same']).numpy()))
    assert res == cm.ood_aurocs(score, x_in, sets, batch_size=256)
    with pytest.raises(ValueError, match='one per image'): cm.ood_aurocs(lambda x: x.mean(), x_in, sets)
    with pytest.raises(ParameterError, match="sets"): cm.ood_aurocs(score, x_in, {})
    with pytest.raises(ParameterError, match=r"sets\['bad'\]"): cm.ood_aurocs(score, x_in, {'bad': torch.rand(3, 3, 28, 28)})


# ---------------------------------------------------------------- FID
def test_frechet_distance_known_values():
    S = np.diag([1.0, 2.0, 3.0])
    assert cm.frechet_distance(np.zeros(3), S, np.array([1.0, 2.0, 0.0]), S) == pytest.approx(5.0)
    assert cm.frechet_distance(np.zeros(3), 4 * S, np.zeros(3), S) == pytest.approx(np.trace(S))
    f = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(cm.fid_from_features(f, f)) < 1e-8


def test_extractor_round_trip_and_registry(small_extractor, fmnist):
    ext, model = small_extractor
    loaded = cm.load_classifier_extractor(ext.path)
    assert loaded.meta == ext.meta and loaded.name == ext.name and ext.name.startswith('fmnist_cnn16@')
    m2 = loaded.load_model()
    x = fmnist[1].x[:64]
    xq = cm.to_uint8(x).float() / 255
    assert torch.equal(m2.embed(xq), model.embed(xq))
    feats = cm.extract_features(x, loaded)
    assert feats.shape == (64, 16) and feats.dtype == np.float64
    assert np.allclose(feats, model.embed(xq).double().numpy())
    assert cm.register_classifier_extractor() == cm.register_classifier_extractor()  # idempotent
    assert cm.CLASSIFIER_EXTRACTOR in cm.FEATURE_EXTRACTORS_REGISTRY
    with pytest.raises(ValueError, match='uint8'):
        cm.TorchFidelityClassifier(cm.CLASSIFIER_EXTRACTOR, ['penultimate'], feature_extractor_weights_path=ext.path)(x)


def test_tampered_weights_are_refused(small_extractor, tmp_path):
    ext, model = small_extractor
    other = cm.save_classifier_extractor(model, ext.meta, tmp_path / 'copy.pt')
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save(sd, other.path)  # weights changed behind the metadata's back
    with pytest.raises(RuntimeError, match='do not match'): cm.load_classifier_extractor(other.path).load_model()


def test_fid_torch_fidelity_equals_own_formula(small_extractor, fmnist):
    ext, _ = small_extractor
    tr, te = fmnist
    a, b = te.subset(300, seed=1).x, tr.subset(200, seed=2).x
    r = cm.fid_score(a, b, extractor=ext, device='cpu')
    assert r['n_generated'] == 300 and r['n_reference'] == 200 and ext.name in r['extractor']
    own = cm.fid_from_features(cm.extract_features(a, ext), cm.extract_features(b, ext))
    assert r['fid'] == pytest.approx(own, rel=1e-6, abs=1e-8)
    noise = cm.fid_score(torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)), b, extractor=ext)
    assert noise['fid'] > 5 * r['fid']


def test_get_fmnist_extractor_caches(monkeypatch, tmp_path, fmnist):
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='train_if_missing=True'):
        cm.get_fmnist_extractor('tiny', train_if_missing=False, n_train=300, epochs=1)
    e1 = cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)
    assert e1.path.parent.parent == tmp_path / 'fid_extractors' and e1.meta['n_train'] == 300 and 0 < e1.accuracy <= 1
    e2 = cm.get_fmnist_extractor('tiny', train_if_missing=False, n_train=300, epochs=1)
    assert e2.meta == e1.meta
    spec = [e.spec for e in cache.entries('fid_extractors')][0]
    assert spec['precision'] == 'fp32' and spec['libraries'] == cache.library_versions('torch') and spec['libraries']['torch'] and spec['seed'] == 0
    assert spec['train_data'] == e1.meta['train_data_hash'] and spec['config']['n_train'] == 300
    # another seed is another extractor (another key), never the cached one
    e3 = cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, seed=1, verbose=False)
    assert e3.path != e1.path and len(cache.entries('fid_extractors')) == 2
    with pytest.raises(ParameterError, match="'preset'"): cm.get_fmnist_extractor('huge')


def _weights(model): return [v.clone() for v in model.state_dict().values()]


def test_training_ignores_the_callers_context(fmnist):
    "Trained under a bf16 autocast, no_grad or inference_mode: bitwise the same weights, and the caller's RNG untouched."
    tr, te = fmnist
    sub = tr.subset(300, seed=0)
    kw = dict(widths=(4, 8), feature_dim=16, epochs=1, batch_size=50)
    m0, meta0 = cm.train_feature_cnn(sub.x, sub.y, te.x[:500], te.y[:500], **kw)
    for ctx in [lambda: torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad, torch.inference_mode]:
        torch.manual_seed(7); want = torch.rand(2); torch.manual_seed(7)
        with ctx():
            m1, meta1 = cm.train_feature_cnn(sub.x, sub.y, te.x[:500], te.y[:500], **kw)
        assert torch.equal(torch.rand(2), want)
        assert all(torch.equal(a, b) for a, b in zip(_weights(m0), _weights(m1)))
        assert meta1['test_accuracy'] == meta0['test_accuracy'] and meta1['final_train_loss'] == meta0['final_train_loss']


def test_tiny_preset_learns_inside_autocast(monkeypatch, tmp_path, fmnist):
    "The failure this guards against: the 'tiny' extractor requested inside a bf16 autocast trained to chance (10 %)."
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        ext = cm.get_fmnist_extractor('tiny', verbose=False)
    assert ext.accuracy >= cm.EXTRACTOR_FLOORS['tiny'] and ext.meta['precision'] == 'fp32'


def test_tiny_preset_same_weights_at_any_thread_count(monkeypatch, tmp_path, fmnist):
    "Trained by a process on 2 threads and by one on 1 thread: the same weights (cached artefacts are computed on one thread)."
    names, before = [], torch.get_num_threads()
    try:
        for i, threads in enumerate((2, 1)):
            monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path / str(i)))
            torch.set_num_threads(threads)
            names.append(cm.get_fmnist_extractor('tiny', verbose=False).name)
            assert torch.get_num_threads() == threads   # the caller's thread count is given back
    finally: torch.set_num_threads(before)
    assert names[0] == names[1], names


@pytest.fixture
def quick_cached(monkeypatch, tmp_path, fmnist):
    "A quick custom extractor (300 images, 1 epoch: about 33 % accuracy, floor 20 %) in a cache of its own."
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    return cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)


def _retrained(ext, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(ext.path.parent) in lines[0] and 'computing it again' in lines[0], lines
    return again, lines[0]


def test_cached_extractor_at_chance_is_retrained(quick_cached, caplog):
    ext = quick_cached
    mp = ext.path.with_suffix('.json')
    mp.write_text(json.dumps(dict(ext.meta, test_accuracy=0.1)))        # the metadata says chance
    again, line = _retrained(ext, caplog)
    assert 'below the floor' in line and again.path == ext.path and again.accuracy == ext.accuracy > 0.2
    assert again.meta['weights_sha256'] == ext.meta['weights_sha256']   # trained again: the same weights


def test_cached_chance_weights_are_retrained(quick_cached, caplog):
    "Weights that predict one class (a chance model) with metadata claiming a good accuracy: the spot check catches them."
    ext = quick_cached
    model = ext.load_model()
    with torch.no_grad():
        model.head.weight.zero_(); model.head.bias.zero_(); model.head.bias[3] = 1.0
    cm.save_classifier_extractor(model, {k: v for k, v in ext.meta.items() if k != 'weights_sha256'}, ext.path)
    again, line = _retrained(ext, caplog)
    assert 'test images, below the floor' in line and again.meta['weights_sha256'] == ext.meta['weights_sha256']


def test_damaged_extractor_files_are_retrained(quick_cached, caplog):
    ext = quick_cached
    ext.path.write_bytes(ext.path.read_bytes()[:100])
    again, line = _retrained(ext, caplog)
    assert 'do not match' in line and again.meta['weights_sha256'] == ext.meta['weights_sha256']


def test_extractor_below_its_floor_is_never_stored(monkeypatch, tmp_path, fmnist):
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    real = cm.train_feature_cnn
    def at_chance(*a, **k):
        model, meta = real(*a, **k)
        return model, dict(meta, test_accuracy=0.1)
    monkeypatch.setattr(cm, 'train_feature_cnn', at_chance)
    with pytest.raises(cm.CorruptExtractorError, match='not stored: recorded test accuracy 0.1 is below the floor'):
        cm.get_fmnist_extractor('tiny', n_train=300, epochs=1, verbose=False)
    assert not cache.entries('fid_extractors')


def test_every_cached_extractor_is_above_its_floor(fmnist):
    "In the cache this process uses (the suite's, after `make ablations`): every extractor stored there passes its floor."
    cm.get_fmnist_extractor('tiny', verbose=False)   # at least the one the lessons and tests use
    found = cache.entries('fid_extractors')
    assert found
    for e in found:
        ext = cm.load_classifier_extractor(e.path / 'weights.pt')
        preset, cfg = e.spec['preset'], e.spec['config']
        floor = cm.EXTRACTOR_FLOORS[preset] if {**cfg, 'widths': tuple(cfg['widths'])} == cm.EXTRACTOR_PRESETS[preset] else cm.CUSTOM_FLOOR
        assert ext.accuracy >= floor > 0.1, (e.path, ext.accuracy, floor)
        assert ext.meta['accuracy_floor'] == floor and ext.meta['precision'] == 'fp32'


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize('bad,match', [
    (torch.rand(10, 28, 28), '4 dimensions'),
    (torch.rand(10, 1, 28, 28) * 1.5, r'valid: \[0, 1\]'),
    (torch.rand(10, 1, 28, 28) - 0.5, r'valid: \[0, 1\]'),
    (torch.rand(10, 3, 32, 32), r'expected \(1, 28, 28\)'),
    ((torch.rand(10, 1, 28, 28) * 255).to(torch.uint8), 'float'),
    (torch.rand(1, 1, 28, 28), 'at least 2'),
])
def test_fid_bad_images(bad, match, small_extractor):
    ext, _ = small_extractor
    with pytest.raises(ParameterError, match="'generated'.*" + match): cm.fid_score(bad, torch.rand(10, 1, 28, 28), extractor=ext)


def test_fid_bad_names(small_extractor):
    ext, _ = small_extractor
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(ParameterError, match="'dataset'.*fashion_mnist"): cm.fid_score(x, x, dataset='imagenet', extractor=ext)
    with pytest.raises(ParameterError, match="'extractor'"): cm.fid_score(x, x, extractor='vgg')
    with pytest.raises(ParameterError, match='1x28x28'):
        cm.fid_score(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), dataset='cifar10', extractor=ext)


def test_inception_offline_is_a_clear_error(offline):
    assert cm.find_inception_weights() is None
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="extractor='inception'.*offline \\(test\\)"):
        cm.fid_score(x, x, extractor='inception')
    with pytest.raises(FileNotFoundError, match='no FID feature extractor for 3x32x32'):
        cm.fid_score(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), dataset='cifar10')


class Planted:
    "A pickle whose loading would create a marker file: what a hostile weights or statistics file does."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (io.open, (self.marker, 'w'))


def test_inception_weights_are_checked_before_any_load(offline, tmp_path, monkeypatch):
    marker = tmp_path / 'code-ran'
    planted = pickle.dumps(Planted(marker))
    hub = tmp_path / 'hub' / 'checkpoints' / cm.INCEPTION_FILE
    for place in ['env', 'cache', 'hub']:
        p = {'env': tmp_path / 'w.pth', 'cache': cm.cache_dir() / cm.INCEPTION_FILE, 'hub': hub}[place]
        p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(planted)
        if place == 'env': monkeypatch.setenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', str(p))
        else: monkeypatch.delenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', raising=False)
        with pytest.raises(cm.InceptionWeightsError, match=f'{p} is not the published.*SHA-256 {cm.INCEPTION_SHA256}'):
            cm.find_inception_weights(download=False)
        for ext in ('auto', 'inception'):
            with pytest.raises(cm.InceptionWeightsError, match=str(p)):
                cm.fid_score(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), extractor=ext)
        with pytest.raises(cm.InceptionWeightsError, match=str(p)):   # torch-fidelity's own path through our extractor
            cm.SafeInceptionV3('x', ['2048'], feature_extractor_weights_path=p)
        p.unlink()
        assert not marker.exists()
    # a file of the published size with another content is refused too (the full SHA-256 is compared)
    p = tmp_path / 'same-size.pth'; p.write_bytes(planted.ljust(cm.INCEPTION_BYTES, b'\0'))
    with pytest.raises(cm.InceptionWeightsError, match='SHA-256 [0-9a-f]{16}'): cm.check_inception_weights(p)
    assert not marker.exists()


def test_inception_found_locally(offline, tmp_path, monkeypatch):
    "A file with the published hash (here: the hash patched to a stand-in file's) is found and used."
    import hashlib
    p = tmp_path / 'w.pth'; p.write_bytes(b'stand-in')
    monkeypatch.setattr(cm, 'INCEPTION_SHA256', hashlib.sha256(b'stand-in').hexdigest())
    monkeypatch.setattr(cm, 'INCEPTION_BYTES', len(b'stand-in'))
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', str(p))
    assert cm.find_inception_weights(download=False) == p
    kind, where, desc = cm.resolve_fid_extractor('auto', 1, 28, download=False)
    assert kind == 'inception' and where == p and 'inception-v3-compat' in desc


def test_fid_equals_torch_fidelity_calculate_metrics(small_extractor, fmnist, monkeypatch, tmp_path):
    "The suite computes FID with torch-fidelity's own functions: the same number as its calculate_metrics, cached or not."
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    ext, _ = small_extractor
    tr, te = fmnist
    a, b = te.subset(300, seed=3).x, tr.subset(250, seed=4).x
    old = torch_fidelity.calculate_metrics(
        input1=cm.UInt8Images(cm.to_uint8(a)), input2=cm.UInt8Images(cm.to_uint8(b)), fid=True, cache=False,
        feature_extractor=cm.register_classifier_extractor(), feature_layer_fid='penultimate',
        feature_extractor_weights_path=str(ext.path), cuda=False, batch_size=250, save_cpu_ram=True, verbose=False,
    )['frechet_inception_distance']
    calls = []
    monkeypatch.setattr(torch_fidelity, 'calculate_metrics', lambda **k: calls.append(k))   # never used any more
    first = cm.fid_score(a, b, extractor=ext, device='cpu')['fid']       # computes and stores the reference's statistics
    cached = cm.fid_score(a, b, extractor=ext, device='cpu')['fid']      # reads them
    plain = cm.fid_score(a, b, extractor=ext, device='cpu', cache_reference=False)['fid']
    assert abs(first - old) <= 1e-6 * max(1.0, abs(old)) and cached == first == plain and not calls
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert cm.fid_score(a, b, extractor=ext, device='cpu')['fid'] == first   # the caller's autocast changes nothing
    assert not (tmp_path / 'fid_statistics').exists()                         # torch-fidelity's pickle cache is not used
    (npz,) = (tmp_path / 'fid_reference_statistics').glob('*/statistics.npz')
    s = cm.load_statistics(npz)
    assert s['mu'].shape == (16,) and s['sigma'].shape == (16, 16)


def _stats_file(tmp_path):
    (npz,) = (tmp_path / 'fid_reference_statistics').glob('*/statistics.npz')
    return npz


@pytest.mark.parametrize('damage,why', [
    ('pickle', 'it was not unpickled'),
    ('object_array', 'it was not unpickled'),
    ('wrong_shape', 'expected (16,) and (16, 16)'),
    ('nan', 'NaN or infinite'),
    ('missing', 'no array sigma'),
])
def test_cached_statistics_are_checked_and_never_unpickled(damage, why, small_extractor, fmnist, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path))
    ext, _ = small_extractor
    a, b = fmnist[1].subset(100, seed=1).x, fmnist[0].subset(120, seed=2).x
    want = cm.fid_score(a, b, extractor=ext, device='cpu')['fid']
    npz, marker = _stats_file(tmp_path), tmp_path / 'code-ran'
    if damage == 'pickle': npz.write_bytes(pickle.dumps(Planted(marker)))
    elif damage == 'object_array':
        buf = io.BytesIO(); np.savez(buf, mu=np.array([Planted(marker)], dtype=object), sigma=np.eye(16)); npz.write_bytes(buf.getvalue())
    else:
        good = cm.load_statistics(npz)
        bad = {'wrong_shape': dict(mu=good['mu'][:8], sigma=good['sigma']), 'nan': dict(mu=good['mu'] * np.nan, sigma=good['sigma']),
               'missing': dict(mu=good['mu'])}[damage]
        buf = io.BytesIO(); np.savez(buf, **bad); npz.write_bytes(buf.getvalue())
    with caplog.at_level(logging.WARNING):
        assert cm.fid_score(a, b, extractor=ext, device='cpu')['fid'] == want
    lines = [r.getMessage() for r in caplog.records if 'computing it again' in r.getMessage()]
    assert len(lines) == 1 and str(npz.parent) in lines[0] and why in lines[0], lines
    assert not marker.exists() and cm.statistics_problem(cm.load_statistics(npz), 16) is None


# ---------------------------------------------------------------- OOD sets
def test_ood_sets_fashion_mnist(fmnist):
    x_ref = fmnist[1].x[:300]
    sets, skipped = cm.build_ood_sets('fashion_mnist', x_ref, n=100, seed=3, download=False)
    assert set(sets) | set(skipped) == set(cm.OOD_PLANS['fashion_mnist']) and not set(sets) & set(skipped)
    for k in ('digits', 'uniform', 'vflip', 'interp'):
        v = sets[k]
        assert v.shape == (100, 1, 28, 28) and v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1, k
    assert all(isinstance(r, str) and r for r in skipped.values())
    # every flipped image is a test image upside down
    flipped_back = sets['vflip'].flip(-2).flatten(1)
    assert (flipped_back[:, None] == x_ref.flatten(1)[None]).all(-1).any(1).all()
    again = cm.ood_sets('fashion_mnist', x_ref, n=100, seed=3, download=False)
    assert set(again) == set(sets) and all(torch.equal(again[k], sets[k]) for k in sets)
    other = cm.ood_sets('fashion_mnist', x_ref, n=100, seed=4, download=False)
    assert not torch.equal(other['uniform'], sets['uniform'])


def test_ood_sets_errors(fmnist):
    x_ref = fmnist[1].x[:50]
    with pytest.raises(ParameterError, match="'dataset'"): cm.ood_sets('imagenet', x_ref, 10, 0)
    with pytest.raises(ParameterError, match='no OOD plan'): cm.ood_sets('digits', x_ref, 10, 0)
    with pytest.raises(ParameterError, match="'x_ref'"): cm.ood_sets('fashion_mnist', torch.rand(5, 3, 32, 32), 10, 0)
    with pytest.raises(ParameterError, match="'n'"): cm.ood_sets('fashion_mnist', x_ref, 0, 0)
    with pytest.raises(ParameterError, match="'names'"): cm.build_ood_sets('fashion_mnist', x_ref, 10, names=['svhn'])


def test_ood_sets_cifar10_skips_with_reasons(monkeypatch):
    import contrastive_ablations.foundation.data as data
    def missing(name, split='train', root=None, download=False):
        raise data.DatasetNotFoundError(f'{name} not here (test)')
    monkeypatch.setattr(data, 'load_dataset', missing)
    sets, skipped = cm.build_ood_sets('cifar10', torch.rand(20, 3, 32, 32), n=8, seed=0, download=False)
    assert set(sets) == {'interp', 'uniform'} and set(skipped) == {'svhn', 'cifar100'}
    assert 'not here (test)' in skipped['svhn'] and sets['interp'].shape == (8, 3, 32, 32)


@pytest.mark.slow
def test_inception_path_plumbing(offline, tmp_path, monkeypatch):
    """The Inception branch end to end with RANDOM Inception weights (the real ones cannot be downloaded here):
    grayscale -> 3 channels, the '2048' layer, the weights file handed to torch-fidelity."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc
    with monkeypatch.context() as m:  # build an Inception-v3 without its weights, only to get a state_dict
        m.setattr(inc, 'load_state_dict_from_url', lambda *a, **k: None)
        m.setattr(torch.nn.Module, 'load_state_dict', lambda self, sd, *a, **k: None)
        sd = inc.FeatureExtractorInceptionV3('x', ['2048']).state_dict()
    p = tmp_path / 'random-inception.pth'; torch.save(sd, p)
    import hashlib   # random weights stand in for the published file: the check compares with their hash
    monkeypatch.setattr(cm, 'INCEPTION_SHA256', hashlib.sha256(p.read_bytes()).hexdigest())
    monkeypatch.setattr(cm, 'INCEPTION_BYTES', p.stat().st_size)
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', str(p))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)  # Inception is slow on a CPU
    r = cm.fid_score(a, b, extractor='inception', device='cpu')
    assert 'inception-v3-compat' in r['extractor'] and (r['n_generated'], r['n_reference']) == (2, 3)
    assert np.isfinite(r['fid']) and r['fid'] >= 0


@pytest.mark.slow
def test_planted_pickles_run_no_code_in_a_smoke_clel_run(monkeypatch, tmp_path, fmnist):
    """A smoke CLEL run, run again after a pickle that would create a marker file was planted in every cache entry
    (extractor weights, reference statistics, torch-fidelity's old statistics folder) and as the Inception weights:
    the damaged entries are recomputed, no code runs; with the 'auto' extractor the planted Inception file is refused by name."""
    from contrastive_ablations.methods.clel.train import CLEL, run
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', raising=False)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    params = lambda d: CLEL.validate({'profile': 'smoke', 'framework': 'none', 'out_dir': str(tmp_path / d), 'device': 'cpu'})
    m1, _, _ = run(params('r1'))
    assert m1['status'] == 'ok' and np.isfinite(m1['fid'])
    marker = tmp_path / 'code-ran'
    planted = pickle.dumps(Planted(marker))
    targets = [e.path / 'weights.pt' for e in cache.entries('fid_extractors')]
    targets += [e.path / 'statistics.npz' for e in cache.entries('fid_reference_statistics')]
    targets += [cm.cache_dir() / 'fid_statistics' / 'ref-0-contrastive-ablations-classifier-stat-fid-penultimate.pt',
                cm.cache_dir() / cm.INCEPTION_FILE, tmp_path / 'hub' / 'checkpoints' / cm.INCEPTION_FILE]
    assert len(targets) >= 5
    for t in targets: t.parent.mkdir(parents=True, exist_ok=True); t.write_bytes(planted)
    m2, _, _ = run(params('r2'))
    assert m2['status'] == 'ok' and np.isfinite(m2['fid']) and not marker.exists()
    monkeypatch.setitem(CLEL.profiles, 'smoke', {**CLEL.profiles['smoke'], 'fid_extractor': 'auto'})
    with pytest.raises(cm.InceptionWeightsError, match=f'{cm.cache_dir() / cm.INCEPTION_FILE} is not the published'):
        run(params('r3'))
    assert not marker.exists()


def test_prepare_fid_extractor_stops_with_the_reason_offline(offline, capsys):
    "`make fid-extractor PROFILE=paper` without the Inception weights: exit status 2 and where to put them, no traceback."
    from contrastive_ablations.methods.clel.train import prepare_fid_extractor
    assert prepare_fid_extractor('paper') == 2
    err = capsys.readouterr().err
    assert 'FID extractor of the paper profile is not available' in err and cm.INCEPTION_FILE in err, err

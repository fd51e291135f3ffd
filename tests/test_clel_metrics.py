"Tests for contrastive_ablations.clel_metrics: AUROC, FID (torch-fidelity vs own formula), the registered extractor, OOD sets, errors."
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import contrastive_ablations.clel_metrics as cm
from contrastive_ablations.core import ParameterError
from contrastive_ablations.data import load_dataset


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
    assert e1.path.parent == tmp_path / 'fid_extractors' and e1.meta['n_train'] == 300 and 0 < e1.accuracy <= 1
    e2 = cm.get_fmnist_extractor('tiny', train_if_missing=False, n_train=300, epochs=1)
    assert e2.meta == e1.meta
    with pytest.raises(ParameterError, match="'preset'"): cm.get_fmnist_extractor('huge')


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


def test_inception_found_locally(offline, tmp_path, monkeypatch):
    p = tmp_path / 'w.pth'; p.write_bytes(b'x')
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', str(p))
    assert cm.find_inception_weights(download=False) == p
    kind, where, desc = cm.resolve_fid_extractor('auto', 1, 28, download=False)
    assert kind == 'inception' and where == p and 'inception-v3-compat' in desc


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
    import contrastive_ablations.data as data
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
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_INCEPTION_WEIGHTS', str(p))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 28, 28, generator=g), torch.rand(3, 1, 28, 28, generator=g)  # Inception is slow on a CPU
    r = cm.fid_score(a, b, extractor='inception', device='cpu')
    assert 'inception-v3-compat' in r['extractor'] and (r['n_generated'], r['n_reference']) == (2, 3)
    assert np.isfinite(r['fid']) and r['fid'] >= 0

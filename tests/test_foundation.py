"Bad input, determinism and divergence for data.py, networks.py and training.py (fast)."
import math, pickle, shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastive_ablations.foundation import data as D
from contrastive_ablations.foundation.core import ParameterError, seed_everything
from contrastive_ablations.foundation.data import (DATASETS, ArrayDataset, BatchLoader, DatasetNotFoundError, load_dataset,
                                        random_crop, random_hflip, simclr_augment, standard_augment)
from contrastive_ablations.foundation.networks import MODELS, count_parameters, create_model
from contrastive_ablations.foundation.training import (CheckpointMismatchError, DivergedError, TrainResult, accuracy, fit, load_checkpoint,
                                            save_checkpoint)

HAVE_DEBIAN_FASHION = (D.FASHION_MNIST_SYSTEM_DIR/'t10k-images-idx3-ubyte.gz').is_file()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "These networks are tiny: one intra-op thread is faster, and much faster on a loaded machine (seen: 15 s -> 1 s)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_ds(n=96, c=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, c, size, size, generator=g), torch.arange(n) % 10, [str(i) for i in range(10)], 'toy')


# ---------------------------------------------------------------- data: bad input
def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as e: load_dataset('imagenet')
    assert isinstance(e.value, ParameterError)
    for name in DATASETS: assert name in str(e.value)

def test_bad_split():
    with pytest.raises(ParameterError, match="'split'"): load_dataset('digits', 'validation')

def test_fashion_root_without_files_says_both_ways(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e: load_dataset('fashion_mnist', 'test', root=tmp_path, download=False)
    msg = str(e.value)
    assert 'apt-get install dataset-fashion-mnist' in msg and 'download=True' in msg and str(tmp_path) in msg
    assert isinstance(e.value, FileNotFoundError)

@pytest.mark.parametrize('name', ['mnist', 'kmnist', 'cifar10', 'cifar100', 'svhn'])
def test_torchvision_dataset_missing_is_clear(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match=r"download=True") as e: load_dataset(name, 'test', root=tmp_path)
    assert DATASETS[name].title in str(e.value) and str(tmp_path) in str(e.value)

def test_root_that_is_not_a_directory(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="'root'"): load_dataset('cifar10', root=tmp_path/'nowhere')

def test_no_fashion_anywhere_without_root(tmp_path, monkeypatch):
    "Neither the Debian files nor the data directory hold Fashion-MNIST: the error names both ways to get it."
    monkeypatch.setattr(D, 'FASHION_MNIST_SYSTEM_DIR', tmp_path/'no-debian')
    monkeypatch.setattr(D, '_CACHE', {})
    monkeypatch.setenv('CONTRASTIVE_ABLATIONS_DATA', str(tmp_path/'data'))
    with pytest.raises(DatasetNotFoundError, match='apt-get install dataset-fashion-mnist') as e: load_dataset('fashion_mnist', 'test')
    assert 'download=True' in str(e.value)

@pytest.mark.skipif(not HAVE_DEBIAN_FASHION, reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_from_torchvision_layout_matches_debian(tmp_path):
    raw = tmp_path/'FashionMNIST'/'raw'; raw.mkdir(parents=True)
    for f in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'): shutil.copy(D.FASHION_MNIST_SYSTEM_DIR/f, raw/f)
    a, b = load_dataset('fashion_mnist', 'test', root=tmp_path), load_dataset('fashion_mnist', 'test')
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.x.shape == (10000, 1, 28, 28)


# ---------------------------------------------------------------- data: content and determinism
def test_digits_split_is_deterministic_and_complete():
    tr, te = load_dataset('digits', 'train'), load_dataset('digits', 'test')
    assert len(tr) + len(te) == 1797 and tr.x.shape[1:] == (1, 28, 28)
    assert 0 <= tr.x.min() and tr.x.max() <= 1 and tr.x.dtype == torch.float32 and tr.y.dtype == torch.int64
    D._CACHE.clear()
    assert torch.equal(load_dataset('digits', 'test').x, te.x)
    assert torch.bincount(te.y).min() >= 40 and torch.bincount(tr.y).min() >= 125   # stratified

def test_subset_is_stratified_and_seeded():
    ds = small_ds(200)
    s1, s2, s3 = ds.subset(50, seed=0), ds.subset(50, seed=0), ds.subset(50, seed=1)
    assert torch.equal(s1.x, s2.x) and not torch.equal(s1.x, s3.x)
    assert torch.bincount(s1.y, minlength=10).tolist() == [5] * 10
    with pytest.raises(ParameterError): ds.subset(-1)

def test_loader_is_deterministic_and_covers_epoch():
    ds = small_ds(100)
    l1, l2 = BatchLoader(ds, 16, seed=3, device='cpu'), BatchLoader(ds, 16, seed=3, device='cpu')
    e1 = [[y.tolist() for _, y in l1] for _ in range(2)]
    e2 = [[y.tolist() for _, y in l2] for _ in range(2)]
    assert e1 == e2 and e1[0] != e1[1]
    assert len(l1) == 6 and all(len(b) == 16 for b in e1[0])
    xs = torch.cat([x for x, _ in BatchLoader(ds, 32, shuffle=True, drop_last=False, device='cpu')])
    assert xs.shape == ds.x.shape and torch.allclose(xs.sum(0), ds.x.sum(0), atol=1e-4)   # a permutation of all images
    first = lambda seed: next(iter(BatchLoader(ds, 16, seed=seed, device='cpu')))[1]
    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))
    with pytest.raises(ParameterError, match='batch_size'): BatchLoader(ds, 0)
    with pytest.raises(ParameterError, match='batch_size'): BatchLoader(ds, 101)

@pytest.mark.parametrize('aug', [lambda x, g: random_crop(x, 3, g), lambda x, g: random_hflip(x, 0.5, g),
                                 lambda x, g: standard_augment(x, 2, g), lambda x, g: simclr_augment(x, generator=g)])
@pytest.mark.parametrize('channels', [1, 3])
def test_augmentations_deterministic_and_changing(aug, channels):
    x = small_ds(64, channels, 28 if channels == 1 else 32).x
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1

def test_augmentation_bad_parameters():
    x = small_ds(8).x
    with pytest.raises(ParameterError, match='padding'): random_crop(x, -1)
    with pytest.raises(ParameterError, match="'p'"): random_hflip(x, 1.5)
    with pytest.raises(ParameterError, match='jitter'): simclr_augment(x, jitter=2.0)
    with pytest.raises(ValueError): random_crop(x[0], 2)   # not a batch


# ---------------------------------------------------------------- networks
def test_unknown_model_lists_valid_names():
    with pytest.raises(ParameterError) as e: create_model('vgg8', 100)
    for name in MODELS: assert name in str(e.value)

@pytest.mark.parametrize('name', ['cnn_teacher', 'cnn_student', 'resnet20', 'wrn_16_2'])
def test_embed_head_interface(name):
    m = create_model(name, 10).eval()
    x = torch.rand(2, m.in_channels, 28 if m.in_channels == 1 else 32, 28 if m.in_channels == 1 else 32)
    with torch.no_grad(): z, out = m.embed(x), m(x)
    assert z.shape == (2, m.feature_dim) and out.shape == (2, 10) and torch.allclose(out, m.head(z))
    assert m.arch == name and count_parameters(m) > 0


# ---------------------------------------------------------------- training: checkpoints
def test_checkpoint_round_trip_and_mismatch(tmp_path):
    t = create_model('cnn_teacher', 10)
    p = save_checkpoint(tmp_path/'t.pt', t, epoch=2, note='hi', hist=[0.1, 0.2], opt={'lr': torch.tensor(0.1)})
    u = create_model('cnn_teacher', 10)
    extra = load_checkpoint(p, u)
    assert extra['epoch'] == 2 and extra['note'] == 'hi' and extra['hist'] == [0.1, 0.2]
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), u.state_dict().values()))
    with pytest.raises(CheckpointMismatchError) as e: load_checkpoint(p, create_model('cnn_student', 10))
    assert 'cnn_teacher' in str(e.value) and 'cnn_student' in str(e.value)
    with pytest.raises(CheckpointMismatchError, match='head'): load_checkpoint(p, create_model('cnn_teacher', 7))
    with pytest.raises(FileNotFoundError): load_checkpoint(tmp_path/'missing.pt', u)

class _Evil:
    def __reduce__(self): return (print, ('this code ran on load',))

def test_checkpoint_loading_is_weights_only(tmp_path):
    p = tmp_path/'evil.pt'
    torch.save({'format': 1, 'arch': 'cnn_teacher', 'state_dict': {}, 'extra': {'x': _Evil()}}, p)
    with pytest.raises(pickle.UnpicklingError): load_checkpoint(p, create_model('cnn_teacher', 10))
    with pytest.raises(TypeError, match='extra'): save_checkpoint(tmp_path/'bad.pt', create_model('cnn_teacher', 10), obj=_Evil())


# ---------------------------------------------------------------- training: fit
def _setup(seed=0):
    g = seed_everything(seed)
    m = create_model('cnn_student', 10)
    loader = BatchLoader(small_ds(96), 16, seed=seed, device='cpu')
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return m, loader, opt, g

def test_fit_logs_and_is_deterministic():
    rows = []
    for _ in range(2):
        m, loader, opt, g = _setup()
        step = lambda x, y, s: {'loss': F.cross_entropy(m(standard_augment(x, generator=g)), y), 'const': 1.5}
        r = fit(step, loader, 2, opt, eval_fn=lambda e: {'val_acc': accuracy(m, loader.ds)}, progress=False)
        rows.append(r)
    a, b = rows
    assert isinstance(a, TrainResult) and a.status == 'ok' and a.message == ''
    assert len(a.steps) == 12 and a.steps.step.tolist() == list(range(1, 13)) and (a.steps.const == 1.5).all()
    assert a.steps.loss.tolist() == b.steps.loss.tolist()
    assert a.epochs.epoch.tolist() == [1, 2] and a.epochs.step.tolist() == [6, 12]
    assert {'time_s', 'train_loss', 'val_acc'} <= set(a.epochs.columns) and a.epochs.val_acc.between(0, 1).all()
    c = a.curves('student')
    assert list(c.columns[:4]) == ['run', 'kind', 'epoch', 'step'] and len(c) == 14 and (c.run == 'student').all()

def test_fit_log_every_steps_per_epoch_and_deferred_sync_agree():
    res = []
    for sync in (1, 5):
        m, loader, opt, _ = _setup()
        step = lambda x, y, s: {'loss': F.cross_entropy(m(x), y)}
        res.append(fit(step, loader, 2, opt, steps_per_epoch=10, log_every=3, sync_every=sync, progress=False))
    a, b = res
    assert a.steps.step.tolist() == [3, 6, 9, 12, 15, 18] and a.steps.loss.tolist() == b.steps.loss.tolist()
    assert a.epochs.step.tolist() == [10, 20]

def test_fit_nan_loss_gives_diverged_status():
    for sync in (1, 4):
        m, loader, opt, _ = _setup()
        def step(x, y, s):
            ce = F.cross_entropy(m(x), y)
            return {'loss': ce + (float('inf') if s == 5 else 0.0), 'ce': ce}
        r = fit(step, loader, 3, opt, progress=False, sync_every=sync)
        assert r.status == 'diverged' and 'step 5' in r.message and 'loss' in r.message, r.message
        assert r.steps.step.iloc[-1] == 5 and not math.isfinite(r.steps.loss.iloc[-1])
        assert len(r.epochs) == 0 and r.wall_time_s > 0

def test_fit_nonfinite_extra_value_is_only_logged():
    m, loader, opt, _ = _setup()
    r = fit(lambda x, y, s: {'loss': F.cross_entropy(m(x), y), 'auc': float('nan')}, loader, 1, opt, progress=False)
    assert r.status == 'ok' and r.steps.auc.isna().all()

def test_fit_bad_input():
    m, loader, opt, _ = _setup()
    with pytest.raises(TypeError, match="'loss'"): fit(lambda x, y, s: {'ce': F.cross_entropy(m(x), y)}, loader, 1, opt, progress=False)
    with pytest.raises(ParameterError, match='epochs'): fit(lambda x, y, s: {}, loader, 0, opt)
    with pytest.raises(ParameterError, match='optimizers'): fit(lambda x, y, s: {}, loader, 1, [])
    with pytest.raises(ValueError, match='scalars'):
        fit(lambda x, y, s: {'loss': F.cross_entropy(m(x), y), 'v': torch.ones(3)}, loader, 1, opt, progress=False)

def test_accuracy_restores_mode_and_is_a_fraction():
    m, loader, _, _ = _setup()
    m.train()
    acc = accuracy(m, loader.ds)
    assert 0 <= acc <= 1 and m.training
    assert accuracy(m, BatchLoader(loader.ds, 32, shuffle=False, drop_last=False, device='cpu')) == pytest.approx(acc)

def test_fit_diverged_error_from_step_fn():
    m, loader, opt, _ = _setup()
    def step(x, y, s):
        if s == 4: raise DivergedError('energy 1e9 above limit')
        return {'loss': F.cross_entropy(m(x), y)}
    r = fit(step, loader, 2, opt, progress=False)
    assert r.status == 'diverged' and r.message == 'energy 1e9 above limit' and r.steps.step.tolist() == [1, 2, 3]

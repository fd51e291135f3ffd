"""Numerical checks of contrastive_ablations.methods.clel.contrastive against the `lightly` reference implementation,
plus interface tests of every framework on both backbone scales."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from contrastive_ablations.foundation.core import ParameterError
from contrastive_ablations.methods.clel.contrastive import (
    ARCHS, FRAMEWORKS, FeatureQueue, byol_loss, cosine_momentum, create_framework, ema_update_, info_nce_loss,
    mae_loss, nt_xent_loss, patchify, random_patch_mask, unpatchify)

lightly_loss = pytest.importorskip('lightly.loss')
from lightly.models import utils as lu  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402

torch.set_num_threads(2)


# ---------------------------------------------------------------- losses vs lightly
@pytest.mark.parametrize('B,D,tau', [(8, 16, 0.2), (5, 3, 0.5), (32, 128, 0.1)])
def test_nt_xent_matches_lightly(B, D, tau):
    g = torch.Generator().manual_seed(B)
    z1, z2 = torch.randn(B, D, generator=g) * 3, torch.randn(B, D, generator=g)  # unnormalised on purpose
    ref = lightly_loss.NTXentLoss(temperature=tau)(z1, z2)
    assert torch.allclose(nt_xent_loss(z1, z2, tau), ref, atol=1e-5)


def test_nt_xent_extra_negatives_are_extra_columns():
    "With extra negatives the loss equals a hand-built cross-entropy over [2B views + M generated]."
    g = torch.Generator().manual_seed(0)
    z1, z2, n = (F.normalize(torch.randn(k, 8, generator=g), dim=1) for k in (4, 4, 6))
    w = torch.cat([z1, z2])
    rows = []
    for a in range(8):
        pos = (a + 4) % 8
        others = [b for b in range(8) if b != a]
        logits = torch.cat([(w[a] @ w[others].T), w[a] @ n.T]) / 0.2
        rows.append(torch.logsumexp(logits, 0) - (w[a] @ w[pos]) / 0.2)
    assert torch.allclose(nt_xent_loss(z1, z2, 0.2, n), torch.stack(rows).mean(), atol=1e-5)


def test_info_nce_queue_matches_lightly_memory_bank():
    "MoCo InfoNCE + FIFO queue equal lightly's NTXentLoss with a memory bank over several steps."
    B, D, K, tau = 4, 8, 12, 0.2
    ref = lightly_loss.NTXentLoss(temperature=tau, memory_bank_size=(K, D))
    queue = FeatureQueue(K, D)
    ref.memory_bank.bank = queue.keys.clone()  # same initial (random) negatives
    g = torch.Generator().manual_seed(1)
    for step in range(5):  # wraps around the queue
        q = torch.randn(B, D, generator=g).requires_grad_()  # lightly enqueues only when out0 requires grad
        k = torch.randn(B, D, generator=g)
        expected = ref(q, k)
        got = info_nce_loss(q, k, queue.keys, tau)
        queue.enqueue(F.normalize(k, dim=1))
        assert torch.allclose(got, expected, atol=1e-5), step
        assert torch.allclose(queue.keys, ref.memory_bank.bank, atol=1e-6), step
        assert int(queue.ptr) == int(ref.memory_bank.bank_ptr), step


def test_byol_loss_is_two_plus_two_lightly_negative_cosine():
    g = torch.Generator().manual_seed(2)
    p, z = torch.randn(10, 32, generator=g), torch.randn(10, 32, generator=g)
    ref = lightly_loss.NegativeCosineSimilarity()(p, z)
    assert torch.allclose(byol_loss(p, z), 2 + 2 * ref, atol=1e-6)


def test_ema_matches_lightly_update_momentum():
    torch.manual_seed(3)
    online = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    t_ours, t_ref = copy.deepcopy(online), copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters(): p.add_(torch.randn_like(p))
    for m in (0.99, 0.5, 0.996):
        ema_update_(t_ours, online, m)
        lu.update_momentum(online, t_ref, m)
        for a, b in zip(t_ours.parameters(), t_ref.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def test_cosine_momentum_matches_lightly_schedule():
    K = 50
    for k in range(K + 1):  # lightly's schedule over K+1 points is BYOL's 1-(1-b)(cos(pi k/K)+1)/2
        assert abs(cosine_momentum(k, K, 0.99) - cosine_schedule(k, K + 1, 0.99, 1.0)) < 1e-12


# ---------------------------------------------------------------- MAE utilities vs lightly
@pytest.mark.parametrize('C,H,p', [(1, 28, 4), (1, 28, 7), (3, 32, 4), (3, 32, 8)])
def test_patchify_matches_lightly(C, H, p):
    x = torch.rand(3, C, H, H)
    ours = patchify(x, p)
    assert torch.equal(ours, lu.patchify(x, p))
    assert torch.equal(unpatchify(ours, p, C), lu.unpatchify(ours, p, C))
    assert torch.equal(unpatchify(ours, p, C), x)


@pytest.mark.parametrize('N', [16, 49, 64])
def test_random_patch_mask_matches_lightly(N):
    torch.manual_seed(4)
    ref_keep, ref_mask = lu.random_token_mask((6, N), mask_ratio=0.75, mask_class_token=True)
    torch.manual_seed(4)
    keep, mask = random_patch_mask(6, N, 0.75)
    assert torch.equal(keep, ref_keep) and torch.equal(mask, ref_mask)
    assert keep.shape[1] == int(N * 0.25)


def test_mae_loss_matches_lightly_style_masked_mse():
    "lightly's MAE example: MSE between predictions and targets gathered at the masked indices."
    torch.manual_seed(5)
    B, N, P = 4, 49, 16
    pred, target = torch.randn(B, N, P), torch.randn(B, N, P)
    keep, masked = random_patch_mask(B, N, 0.75)
    mask = torch.zeros(B, N, dtype=torch.bool).scatter_(1, masked, True)
    ref = F.mse_loss(lu.get_at_index(pred, masked), lu.get_at_index(target, masked))
    assert torch.allclose(mae_loss(pred, target, mask), ref, atol=1e-6)
    # per-patch normalised targets, as lightly's normalize_mean_var (unbiased var differs: compare to our formula)
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(mae_loss(pred, target, mask, norm_pix=True),
                          F.mse_loss(lu.get_at_index(pred, masked), lu.get_at_index(t, masked)), atol=1e-6)


# ---------------------------------------------------------------- frameworks end to end vs lightly
def test_simclr_framework_loss_matches_lightly():
    torch.manual_seed(6)
    fw = create_framework('simclr', 1, 28)
    v1, v2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    loss, _ = fw.loss(v1, v2)
    z1, z2 = fw._embed(torch.cat([v1, v2])).chunk(2)  # same batch composition (BN statistics)
    assert torch.allclose(loss, lightly_loss.NTXentLoss(temperature=0.2)(z1, z2), atol=1e-5)


def test_moco_framework_loss_matches_lightly():
    torch.manual_seed(7)
    fw = create_framework('moco', 1, 28, queue_size=32, symmetric=False)
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 128))
    ref.memory_bank.bank = fw.queue.keys.clone()
    opt = fw.recommended_optimizer(lr=0.1)
    for step in range(3):
        v1, v2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
        loss, _ = fw.loss(v1, v2)
        with torch.no_grad():
            k = fw.key_head(fw.key_backbone(torch.cat([v1, v2]))).chunk(2)[1]
        q = fw.head(fw.backbone(v1))
        assert torch.allclose(loss, ref(q, k), atol=1e-5), step
        opt.zero_grad(); loss.backward(); opt.step(); fw.after_step()
        assert torch.allclose(fw.queue.keys, ref.memory_bank.bank, atol=1e-5), step


# ---------------------------------------------------------------- interface on both scales
SHAPES = {'small': (1, 28), 'resnet18': (3, 32)}


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('name', FRAMEWORKS)
def test_framework_interface(name, arch):
    torch.manual_seed(8)
    C, S = SHAPES[arch]
    fw = create_framework(name, C, S, latent_dim=64, arch=arch, **({'queue_size': 16} if name == 'moco' else {}))
    assert fw.name == name and fw.latent_dim == 64 and fw.uses_negatives == (name in ('simclr', 'moco'))
    B = 2 if arch == 'resnet18' else 4  # BatchNorm needs > 1 sample; keep the ResNet cheap
    x1, x2 = torch.rand(B, C, S, S), torch.rand(B, C, S, S)
    with torch.no_grad():
        z = fw.latent(x1)
    assert z.shape == (B, 64) and torch.allclose(z.norm(dim=1), torch.ones(B), atol=1e-5)
    gen = F.normalize(torch.randn(3, 64), dim=1).requires_grad_()
    opt = fw.recommended_optimizer()
    assert isinstance(opt, torch.optim.AdamW if name == 'mae' else torch.optim.SGD)
    n_opt = sum(p.numel() for group in opt.param_groups for p in group['params'])
    assert n_opt == sum(p.numel() for p in fw.parameters() if p.requires_grad)
    loss, logs = fw.loss(x1, x2, generated=gen)
    assert loss.dim() == 0 and torch.isfinite(loss) and isinstance(logs['loss'], float)
    before = [p.detach().clone() for p in fw.trainable_parameters()]
    opt.zero_grad(); loss.backward(); opt.step(); fw.after_step()
    assert gen.grad is None  # the encoder loss never reaches the EBM's directions
    assert any(not torch.equal(a, b) for a, b in zip(before, fw.trainable_parameters()))
    assert int(fw.step) == 1


def test_generated_negatives_matter_only_for_negative_based_methods():
    torch.manual_seed(9)
    x1, x2 = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    for name in FRAMEWORKS:
        fw = create_framework(name, 1, 28)
        gen = F.normalize(torch.randn(6, 128), dim=1)
        torch.manual_seed(0); a, _ = fw.loss(x1, x2)
        torch.manual_seed(0); b, _ = fw.loss(x1, x2, generated=gen)
        assert (not torch.allclose(a, b)) == fw.uses_negatives, name


def test_simclr_generated_equal_to_latents_raises_loss():
    torch.manual_seed(10)
    fw = create_framework('simclr', 1, 28).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        plain, _ = fw.loss(x, x)
        hard, _ = fw.loss(x, x, generated=fw.latent(x))
    assert hard > plain


def test_moco_generated_do_not_enter_queue():
    torch.manual_seed(11)
    fw = create_framework('moco', 1, 28, queue_size=64)
    gen = F.normalize(torch.randn(5, 128), dim=1)
    fw.loss(torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28), generated=gen)
    fw.after_step()
    assert int(fw.queue.ptr) == 16  # 2B keys (symmetric), not 2B + 5
    assert not any(torch.allclose(row, gk) for row in fw.queue.keys for gk in gen)
    assert not fw.queue.keys.requires_grad


def test_moco_and_byol_targets_are_ema_and_frozen():
    torch.manual_seed(12)
    by = create_framework('byol', 1, 28, total_steps=100)
    assert all(not p.requires_grad for p in by.target_backbone.parameters())
    with torch.no_grad():
        for p in by.backbone.parameters(): p.add_(1.0)
    t0 = [p.clone() for p in by.target_backbone.parameters()]
    by.after_step()  # momentum 0.99 at step 0
    for t, a, o in zip(by.target_backbone.parameters(), t0, by.backbone.parameters()):
        assert torch.allclose(t, 0.99 * a + 0.01 * o, atol=1e-6)
    assert by.momentum == cosine_momentum(1, 100, 0.99)


def test_mae_latent_is_rotation_of_pooled_features():
    "MAE's latent is a fixed orthonormal map of the mean-pooled encoder tokens: cosines are preserved."
    torch.manual_seed(13)
    fw = create_framework('mae', 1, 28).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        pooled = F.normalize(fw.mae.encode(x).mean(1), dim=1)
        z = fw.latent(x)
    assert torch.allclose(pooled @ pooled.T, z @ z.T, atol=1e-5)
    assert all(not p.requires_grad for p in [fw.projection])  # a buffer, never trained
    assert 'projection' in fw.state_dict()


def test_mae_masks_three_quarters_and_ignores_visible():
    torch.manual_seed(14)
    fw = create_framework('mae', 3, 32, arch='small')  # 64 patches of 4x4
    keep, masked = random_patch_mask(2, fw.mae.n_patches, fw.mask_ratio)
    assert masked.shape[1] == 48 and keep.shape[1] == 16


@pytest.mark.parametrize('name', FRAMEWORKS)
def test_loss_decreases_on_two_alternating_batches(name):
    "A few steps on two fixed batches must lower the loss (catches sign errors and dead gradients).\n\n    MoCo's first step sees a random queue (an easy task), and its loss jumps once the queue holds real keys,\n    so the comparison starts at step 1."
    torch.manual_seed(15)
    knobs = {'byol': {'total_steps': 10}, 'moco': {'queue_size': 16}}.get(name, {})
    fw = create_framework(name, 1, 28, **knobs)
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(16, 1, 28, 28, generator=g)
    opt = fw.recommended_optimizer(lr=None if name == 'mae' else 0.1)
    losses = []
    for step in range(10):
        x = pool[(step % 2) * 8:(step % 2 + 1) * 8]
        v1, v2 = x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        torch.manual_seed(step % 2)  # the same MAE mask for each batch: a fixed objective
        loss, _ = fw.loss(v1, v2)
        opt.zero_grad(); loss.backward(); opt.step(); fw.after_step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[1:4]), losses


# ---------------------------------------------------------------- errors
def test_unknown_framework_lists_valid_names():
    with pytest.raises(ParameterError) as e:
        create_framework('simsiam', 1, 28)
    assert all(n in str(e.value) for n in FRAMEWORKS) and "'name'" in str(e.value)


def test_bad_arch_knob_and_shapes():
    with pytest.raises(ParameterError, match='arch'):
        create_framework('simclr', 1, 28, arch='vit')
    with pytest.raises(ParameterError, match='temperature'):
        create_framework('simclr', 1, 28, temperature=0)
    with pytest.raises(ParameterError, match='unknown parameter'):
        create_framework('mae', 1, 28, queue_size=10)
    with pytest.raises(ParameterError, match='patch_size'):
        create_framework('mae', 1, 28, patch_size=5)
    fw = create_framework('simclr', 1, 28)
    with pytest.raises(ValueError, match='view2'):
        fw.loss(torch.rand(4, 1, 28, 28), torch.rand(4, 3, 28, 28))
    with pytest.raises(ValueError, match='generated'):
        fw.loss(torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), generated=torch.rand(4, 64))
    with pytest.raises(ValueError, match="'x'"):
        fw.latent(torch.rand(4, 28, 28))


def test_knobs_match_the_constructors():
    "Each framework's KNOBS declare exactly the method-specific constructor arguments, with the same defaults."
    import inspect
    from contrastive_ablations.methods.clel.contrastive import _CLASSES
    for name, cls in _CLASSES.items():
        sig = inspect.signature(cls.__init__).parameters
        own = [k for k in sig if k not in ('self', 'in_channels', 'image_size', 'latent_dim', 'arch')]
        assert own == list(cls.KNOBS), name
        assert all(sig[k].default == p.default for k, p in cls.KNOBS.items()), name

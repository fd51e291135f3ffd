"""Train a Fashion-MNIST classifier with label-smoothed cross-entropy; measure its accuracy and calibration."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from contrastive_ablations.foundation.core import get_device, resolve_precision, seed_everything, autocast
from contrastive_ablations.foundation.data import BatchLoader, load_dataset, standard_augment
from contrastive_ablations.foundation.networks import create_model
from contrastive_ablations.foundation.training import fit, predict


@dataclass
class LSConfig:
    "The recipe (the quick profile); the spec's profiles change some of these values."
    arch: str = 'cnn_student'      # a network of foundation.networks.MODELS
    epochs: int = 3                # passes over the training subset
    batch_size: int = 128
    lr: float = 0.05               # SGD with momentum 0.9, cosine decay to 0 over the run
    weight_decay: float = 5e-4
    n_train: int | None = 10000    # class-stratified training subset (None: all)
    n_test: int | None = 2000      # class-stratified test subset (None: all)
    ece_bins: int = 15


def smoothed_targets(y: torch.Tensor, n_classes: int, epsilon: float) -> torch.Tensor:
    "The label-smoothed target distribution [B,K]: (1 − ε)·one-hot(y) + ε/K."
    return (1 - epsilon) * F.one_hot(y, n_classes).float() + epsilon / n_classes


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    "ECE in %: the confidence-weighted gap |accuracy − confidence| over equal-width confidence bins."
    conf, pred = logits.softmax(1).max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any(): ece += m.float().mean().item() * abs(correct[m].mean().item() - conf[m].mean().item())
    return 100 * ece


def profile_config(profile: str) -> LSConfig:
    "The recipe of a profile."
    from label_smoothing.spec import LABEL_SMOOTHING
    return LSConfig(**LABEL_SMOOTHING.profiles[profile])


def run(params: dict) -> tuple[dict, pd.DataFrame, dict]:
    "One run: (metrics, curves, artifacts) for the checked `params`."
    cfg, t0 = profile_config(params['profile']), time.perf_counter()
    device = get_device(params['device'])
    precision = resolve_precision(params['precision'], device)
    train, test = load_dataset(params['dataset'], 'train'), load_dataset(params['dataset'], 'test')
    if cfg.n_train: train = train.subset(cfg.n_train, seed=params['seed'])
    if cfg.n_test: test = test.subset(cfg.n_test, seed=0)   # the same test images for every seed
    g = seed_everything(params['seed'])
    model = create_model(cfg.arch, n_classes=len(train.classes), in_channels=train.x.shape[1]).to(device)
    loader = BatchLoader(train, cfg.batch_size, seed=params['seed'], device=device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * len(loader))
    eps, K = params['epsilon'], len(train.classes)

    def step(x, y, i):
        logits = model(standard_augment(x, generator=g))
        return {'loss': F.cross_entropy(logits, y, label_smoothing=eps)}   # = cross-entropy against smoothed_targets

    def evaluate(epoch):
        logits, labels = predict(model, test, device)
        return {'val_acc': (logits.argmax(1) == labels).float().mean().item()}

    res = fit(step, loader, cfg.epochs, opt, sched, eval_fn=evaluate, progress=False, precision=precision)
    with autocast(precision, device): logits, labels = predict(model, test, device)
    steps, epochs = res.steps.assign(kind='step'), res.epochs.assign(kind='epoch')
    curves = pd.concat([steps, epochs], ignore_index=True).assign(run='classifier')
    for c in ('epoch', 'step'):
        if c not in curves: curves[c] = np.nan
    metrics = dict(status=res.status, top1=100 * (logits.argmax(1) == labels).float().mean().item(),
                   ece=expected_calibration_error(logits, labels, cfg.ece_bins),
                   nll=F.cross_entropy(logits, labels).item(), wall_time_s=time.perf_counter() - t0)
    if not all(math.isfinite(v) for k, v in metrics.items() if k != 'status'): metrics['status'] = 'diverged'
    return metrics, curves, {}


def plot_curves(curves: pd.DataFrame, title: str = ''):
    "Training loss per step and test accuracy per epoch."
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), layout='constrained')
    s, e = curves[curves.kind == 'step'], curves[curves.kind == 'epoch']
    a.plot(s.step, s.loss); a.set_xlabel('step'); a.set_ylabel('training loss (smoothed CE)')
    if 'val_acc' in e: b.plot(e.epoch, 100 * e.val_acc, marker='o')
    b.set_xlabel('epoch'); b.set_ylabel('test top-1 accuracy (%)'); fig.suptitle(title)
    return fig

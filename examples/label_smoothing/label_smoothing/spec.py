"""The method as data: its knobs, profiles, metrics, the part its study ablates. Imports no torch."""
from pathlib import Path

from contrastive_ablations.foundation.core import Param
from contrastive_ablations.foundation.experiments import (CurveFigure, Experiment, FASHION, Metric, Part, WALL_TIME,
                                                          standard_knobs)

HERE = Path(__file__).resolve().parent

KNOBS = {
    'epsilon': Param(float, 0.1, lo=0, hi=0.99, doc='label smoothing ε: the target is (1 − ε)·one-hot + ε/K (0 = plain cross-entropy)'),
    **standard_knobs('runs/manual/label_smoothing'),   # seed, profile, dataset, out_dir, device, precision
}

LS_PROFILES = {   # the values that differ from `train.LSConfig`'s defaults (the quick recipe)
    'smoke': dict(epochs=1, n_train=1024, n_test=512, batch_size=64),
    'quick': {},
    'paper': dict(epochs=15, n_train=None, n_test=None),
}

METRICS = (
    Metric('top1', 'test top-1 accuracy', '%', 0, 100, True, family='top1', figure='accuracy'),
    Metric('ece', 'expected calibration error (15 bins)', '%', 0, 100, False, family='calibration', figure='calibration'),
    Metric('nll', 'test negative log-likelihood', 'nats', 0, None, False, family='calibration', figure='calibration'),
    WALL_TIME)

LABEL_SMOOTHING = Experiment(
    'label_smoothing', str(HERE / 'template.ipynb'), 'label smoothing of a Fashion-MNIST classifier', KNOBS, LS_PROFILES,
    METRICS, families={'top1': 'top-1 accuracy (%)', 'calibration': 'calibration (ECE, NLL; lower is better)'},
    parts=(Part(('label smoothing', 'label smoothing ε', 'smoothing', 'epsilon', 'ε'), 'label_smoothing', 'epsilon', 0.1,
                remove=0.0, fixed=FASHION),),
    config='label_smoothing.train:LSConfig',
    preload=('torch._dynamo', 'matplotlib', 'label_smoothing.train'),
    warm=(('fashion_mnist', 'train'), ('fashion_mnist', 'test')),
    metric_aliases={'top-1 accuracy': 'top1', 'accuracy': 'top1', 'top1': 'top1',
                    'calibration': 'calibration', 'expected calibration error': 'calibration', 'ece': 'calibration'},
    figures=(CurveFigure('Learning curves', ('val_acc',), 'epoch', 'test top-1 accuracy (%)', 'learning curves', percent=True),
             CurveFigure('Training loss', ('loss',), 'step', 'training loss (smoothed cross-entropy)', 'training loss')),
    lessons=(str(HERE / 'lesson.ipynb'),),
    pairing=('A seed sets the training subset, the order of the batches, the initial weights and the augmentation. '
             'Runs with the same seed see identical batches from identical weights, so their difference is the '
             "effect of ε on that seed's training."))

"""Time of the official CLEL strong augmentation: `data.clel_augment` (hand-written, batched) vs kornia 0.6.3.

The official CLEL code runs `RandomResizedCrop(scale=(0.08, 1), bicubic)`, `ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)`,
`RandomGrayscale(p=0.2)` and `RandomHorizontalFlip()` through kornia 0.6.3. Both run on the same batch, interleaved
round by round; prints the median milliseconds per batch of each and the mean |aug(x) - x| of each (same parameters:
the two should agree up to sampling error). kornia is optional: without it only the hand-written path is timed.

    pip install kornia==0.6.3   # optional, for the comparison
    python benchmarks/bench_augment.py --batch 64 --channels 3 --size 32 --rounds 20
"""
import argparse, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package
from contrastive_ablations.foundation.data import clel_augment


def kornia_pipeline(size: int):
    "The official pipeline through kornia, or None when kornia is not installed."
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return K.AugmentationSequential(K.RandomResizedCrop((size, size), scale=(0.08, 1.0), resample='BICUBIC'),
                                    K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
                                    K.RandomHorizontalFlip(), return_transform=False, same_on_batch=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--channels', type=int, default=3, choices=(1, 3))
    ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=20)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    x = torch.rand(a.batch, a.channels, a.size, a.size, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    paths = {'clel_augment': lambda: clel_augment(x, g)}
    k = kornia_pipeline(a.size) if a.channels == 3 else None   # kornia's saturation and hue need RGB
    if k is not None:
        paths['kornia'] = lambda: k(x)
    else:
        print('kornia not installed (or 1-channel images): timing the hand-written path only')
    times = {n: [] for n in paths}
    change = {n: [] for n in paths}
    for n, f in paths.items(): f()   # warm-up
    for _ in range(a.rounds):
        for n, f in paths.items():
            t = time.perf_counter(); y = f(); times[n].append(time.perf_counter() - t)
            change[n].append((y.clamp(0, 1) - x).abs().mean().item())
    for n in paths:
        print(f'{n:>13}: {1e3 * statistics.median(times[n]):7.2f} ms/batch   mean |aug(x) - x| {statistics.mean(change[n]):.3f}')
    if k is not None:
        print(f'kornia / clel_augment time ratio: {statistics.median(times["kornia"]) / statistics.median(times["clel_augment"]):.2f}')


if __name__ == '__main__':
    main()

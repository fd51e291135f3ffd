"""Parameter declarations of the toy experiment notebook `toy_experiment.ipynb` (test fixture for the sweep engine)."""
from contrastive_ablations.foundation.core import Param, PROFILES

PARAMS = dict(
    x=Param(float, 0.3, lo=0, hi=1, doc='the ablated knob'),
    mode=Param(str, 'a', choices=('a', 'b', 'none'), doc='a categorical knob'),
    flag=Param(bool, True, doc='a knob that can be removed'),
    fail=Param(bool, False, doc='raise inside the notebook (to test failed runs)'),
    sleep_s=Param(float, 0.0, lo=0, hi=600, doc='pretend to train for this long'),
    seed=Param(int, 0, lo=0, doc='random seed'),
    profile=Param(str, 'quick', choices=PROFILES, doc='scale profile'),
    out_dir=Param(str, 'runs/manual/toy', identity=False, doc='where the run files go'),
    device=Param(str, 'auto', identity=False, doc='torch device'),
)

def register():
    "Make the toy notebook a registered experiment named 'toy' (plans may then name `notebook: toy`)."
    from pathlib import Path
    from contrastive_ablations.engine.plans import register_experiment
    from contrastive_ablations.foundation.experiments import Metric
    return register_experiment('toy', Path(__file__).resolve().parent/'toy_experiment.ipynb', PARAMS,
                               (Metric('toy_top1', 'toy accuracy', '%', 0, 100, True, family='top1'),
                                Metric('toy_loss_volatility', 'toy loss volatility', '', 0, None, False, family='stability'),
                                Metric('wall_time_s', 'wall time', 's', 0, None, None)),
                               {'top1': 'toy accuracy', 'stability': 'toy loss volatility'})

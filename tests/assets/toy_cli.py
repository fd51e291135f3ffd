"""`contrastive-ablations` with the toy experiment registered: what the tests run in a subprocess."""
import importlib.util, sys
from pathlib import Path

if __name__ == '__main__':   # (spawned sweep workers import this file too; they need no registry)
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent.parent))   # the source checkout
    spec = importlib.util.spec_from_file_location('toy_experiment', here/'toy_experiment.py')
    toy = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy)
    toy.register()
    from contrastive_ablations.__main__ import main
    sys.exit(main())

"""The package shows its three parts, and nothing written before they were laid out is lost.

- foundation imports neither a method nor the engine; the engine imports no method; a method imports no other method
  and not the engine (read from every module's imports, including those inside functions);
- a run folder written by the flat layout (tests/assets/runs_written_before_move: a smoke sweep of the CLEL
  norm-direction study, before the package was split) is still finished, keeps its run ids and reports;
- a Slurm job pickled by the flat layout (its function referenced as `contrastive_ablations.sweep.slurm_job`) unpickles."""
import ast
import pickle
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'contrastive_ablations'
ASSET = Path(__file__).resolve().parent / 'assets' / 'runs_written_before_move'
REPO = PACKAGE.parent


def module_name(path: Path) -> str:
    "contrastive_ablations.engine.sweep for contrastive_ablations/engine/sweep.py (a package: its folder's name)."
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: Path) -> set:
    "Dotted package modules that the module at `path` imports, anywhere in it (relative imports resolved)."
    name, out = module_name(path), set()
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
            mod = '.'.join(base + ([node.module] if node.module else []))
            if mod.startswith('contrastive_ablations'):
                # `from pkg import module` imports the module; `from module import name` the module itself
                subs = {f'{mod}.{a.name}' for a in node.names if (PACKAGE.parent / f'{mod}.{a.name}'.replace('.', '/')).with_suffix('.py').exists()
                        or (PACKAGE.parent / f'{mod}.{a.name}'.replace('.', '/')).is_dir()}
                out |= subs or {mod}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith('contrastive_ablations')}
    return out


def part_of(module: str) -> str:
    "'foundation', 'engine', 'methods.<name>' or 'package' (the top level: __init__, __main__, _modidx)."
    parts = module.split('.')
    if len(parts) < 2 or parts[1] in ('__main__', '_modidx'): return 'engine' if parts[-1] == '__main__' else 'package'
    if parts[1] == 'methods': return '.'.join(parts[1:3]) if len(parts) > 2 else 'methods'
    return parts[1]


def allowed(src: str, dst: str) -> bool:
    "Whether the part `src` may import the part `dst`."
    if src == dst or dst in ('foundation', 'package'): return True
    if src == 'foundation': return False
    if src == 'engine': return dst == 'engine'
    return False   # a method imports the foundation and itself only


def module_graph() -> dict:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob('*.py')) if p.name != '_modidx.py'}


def test_the_import_walk_sees_every_kind_of_import():
    graph = module_graph()
    assert 'contrastive_ablations.foundation.core' in graph['contrastive_ablations.engine.runs']
    assert 'contrastive_ablations.methods.clel.sampler' in graph['contrastive_ablations.methods.clel.train']
    # imports inside functions count too: the sweep's workers import the local executor lazily, the CLI its commands
    assert any(m.startswith('contrastive_ablations.foundation') for m in graph['contrastive_ablations.engine.slurm'])
    assert not allowed('foundation', 'engine') and not allowed('engine', 'methods.ickd') and not allowed('methods.ickd', 'methods.clel')
    assert allowed('methods.ickd', 'foundation') and allowed('engine', 'foundation')


def test_parts_import_only_what_they_may():
    graph = module_graph()
    parts = {part_of(m) for m in graph}
    assert {'foundation', 'engine', 'methods.ickd', 'methods.clel'} <= parts, parts
    bad = [f'{m} ({part_of(m)}) imports {d} ({part_of(d)})' for m, ds in graph.items() for d in sorted(ds)
           if not allowed(part_of(m), part_of(d))]
    assert not bad, 'imports across the parts:\n' + '\n'.join(bad)


def test_a_run_folder_written_before_the_move_is_finished_and_reports(tmp_path, capsys):
    from contrastive_ablations.engine.plans import load_plans
    from contrastive_ablations.engine.report import cli_report
    from contrastive_ablations.engine.runs import expand_runs, run_state
    from contrastive_ablations.engine.rundata import load_study
    runs = tmp_path / 'runs'
    shutil.copytree(ASSET / 'clel_norm_direction', runs / 'clel_norm_direction')   # moved elsewhere, as a user may
    written = sorted(p.name for p in (runs / 'clel_norm_direction').iterdir() if p.is_dir())
    plan = load_plans([REPO / 'plans' / 'clel_norm_direction.yaml'], profile='smoke', seeds=1)
    specs = expand_runs(plan, 'smoke', runs)
    assert sorted(s.run_id for s in specs) == written            # today's code names the runs as the flat layout did
    assert [run_state(s) for s in specs] == ['done', 'done']     # so a sweep resumes without running them again
    st = load_study(runs / 'clel_norm_direction')
    assert len(st.runs) == 2 and set(st.runs.status) == {'ok'} and st.parameter == 'norm_direction'
    assert cli_report([str(runs)]) == 0
    out = capsys.readouterr().out
    assert 'clel_norm_direction' in out and 'fid' in out.lower()


def test_a_slurm_job_pickled_before_the_move_unpickles():
    from contrastive_ablations.engine.slurm import slurm_job
    from contrastive_ablations.engine.runs import run_state
    from contrastive_ablations.engine.report import cli_report
    # pickled by cloudpickle, as submitit does, from the flat layout's contrastive_ablations.sweep and .report
    import sys
    for old in ('contrastive_ablations.sweep', 'contrastive_ablations.report'): sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match='moved to'):
        job, state, report, name = pickle.loads((ASSET / 'slurm_job.pkl').read_bytes())
    assert (job, state, report, name) == (slurm_job, run_state, cli_report, 'clel')

"""Structural checks on committed notebooks: python3 kernelspec, no outputs, papermill templates tagged.

Usage: python tests/check_notebooks.py NOTEBOOK...   (exit 1 and a list of problems on failure)
"""
import json
import sys
from pathlib import Path


def problems(path: Path) -> list[str]:
    "Every rule `path` breaks, as readable lines."
    nb = json.loads(path.read_text(encoding='utf-8'))
    out = []
    ks = nb.get('metadata', {}).get('kernelspec', {})
    if ks.get('name') != 'python3' or ks.get('language') != 'python':
        out.append(f'{path}: kernelspec must be python3/python (papermill needs it), found {ks or None}')
    for i, cell in enumerate(nb.get('cells', [])):
        if cell.get('outputs') or cell.get('execution_count'):
            out.append(f'{path}: cell {i} has saved outputs (results are executed into the build, not into git)')
    if 'ablation_nbs' in path.parts:
        tagged = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
        if len(tagged) != 1:
            out.append(f"{path}: a papermill template needs exactly one cell tagged 'parameters', found {len(tagged)}")
    return out


if __name__ == '__main__':
    found = [p for a in sys.argv[1:] for p in problems(Path(a))]
    print('\n'.join(found) if found else f'check-notebooks: {len(sys.argv) - 1} notebooks OK')
    sys.exit(1 if found else 0)

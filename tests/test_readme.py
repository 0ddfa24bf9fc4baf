"""The README's Python examples run as written."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_readme_python_blocks_run(capsys):
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 2
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("0.")  # the MACs ratio printed
    assert abs(ns["result"].macs_ratio / 0.5 - 1) <= 0.01

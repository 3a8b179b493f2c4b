"""The README's embedding example runs as written."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_embedding_example(capsys):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Embedding\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert out.startswith("exit 0 mmio: wrote 0x1234abcd to 0xd0000000, read 1234abcd")
    assert "'MMIO': 2" in out

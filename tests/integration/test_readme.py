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


def _block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_debugging_example(capsys):
    block = _block("Debugging a guest").replace('"guests/build/', f'"{ROOT}/guests/build/')
    exec(compile("from pyvmm import Machine\n" + block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("breakpoint 22 ") and lines[1] == "watchpoint", lines


def test_snapshot_example(tmp_path, monkeypatch):
    block = _block("Snapshots and clones").replace('"guests/build/', f'"{ROOT}/guests/build/')
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile("from pyvmm import Machine\n" + block, "README.md", "exec"), scope)
    r1, r2, clone = scope["r1"], scope["r2"], scope["clone"]
    assert r1.ok and [e.args for e in r1.syncs()] == [e.args for e in r2.syncs()]
    r3 = clone.run(timeout=30)
    clone.close()
    assert [e.args for e in r3.syncs()] == [e.args for e in r1.syncs()]


def test_files_the_docs_point_at_are_in_a_clone():
    # the README once sent readers to shared/seeds/... and HOST-KVM.md, which a clone lacks
    import subprocess

    tracked = set(subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                                 text=True, check=True).stdout.split())
    if not tracked:  # an sdist, not a clone: every file it needs is in it
        tracked = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()}
    for doc in ("README.md", "docs/architecture.md", "docs/guests.md", "docs/suites.md"):
        text = (ROOT / doc).read_text()
        named = set(re.findall(r"[\w./-]+\.md\b", text)) | set(re.findall(r"\bshared/[\w./-]+", text))
        missing = sorted(n for n in named if n not in tracked and n.lstrip("./") not in tracked)
        assert missing == [], (doc, missing)

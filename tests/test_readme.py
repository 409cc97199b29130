"""The README's promises: its two opening commands, and its Python example runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_ci_runs():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert "probes run digits " in block[0] and block[0].startswith("bash scripts/setup.sh")
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1] in ci


def test_python_example_runs(monkeypatch, capsys):
    code = re.search(r"## Python API.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    assert "root" in capsys.readouterr().out

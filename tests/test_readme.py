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


def test_pipeline_example_runs(monkeypatch, tmp_path, capsys):
    """The pipeline example as written, with the hub download replaced by a tiny pipeline and 4 steps."""
    import diffusers

    from probes.models.tiny_sd import build_tiny_pipeline

    code = re.search(r"## Probe your own diffusers pipeline.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: build_tiny_pipeline(sample_size=8)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taxonomies").symlink_to(ROOT / "taxonomies")
    exec(compile(code.replace("num_inference_steps=30", "num_inference_steps=4"), "README.md", "exec"), {})
    assert "torch.Size([2, 4, 13])" in capsys.readouterr().out
    assert (tmp_path / "runs" / "my-sd15" / "tree.json").is_file()

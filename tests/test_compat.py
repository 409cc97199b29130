"""The torchvision fix for plain scripts: the .pth hook that setup.sh installs."""

import os
import subprocess
import sys
from pathlib import Path

from probes._compat import PTH_NAME, write_startup_hook

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, site_dir: Path | None) -> subprocess.CompletedProcess:
    prefix = f"import site; site.addsitedir({str(site_dir)!r})\n" if site_dir else ""  # processes .pth files
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, env=env, cwd=ROOT)


def test_plain_library_imports_work_with_the_startup_hook(tmp_path):
    assert write_startup_hook(tmp_path).name == PTH_NAME
    done = _python("import sys\n"
                   "assert 'torch' not in sys.modules  # the hook itself imports nothing heavy\n"
                   "from diffusers import StableDiffusionPipeline, UNet2DModel\n"
                   "import open_clip, timm, torchvision\n"
                   "print('ok')", tmp_path)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-1500:]


def test_the_hook_is_harmless_without_probes(tmp_path):
    # A .pth left behind after probes is uninstalled must not break the interpreter.
    write_startup_hook(tmp_path)
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    code = (f"import sys; sys.modules['probes'] = None\nimport site; site.addsitedir({str(tmp_path)!r})\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "ok\n" and done.stderr == ""

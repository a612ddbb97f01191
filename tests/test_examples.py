"""The cluster examples under examples/ parse, and every vatt option they pass exists (read from `vatt ... --help`)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VATT = str(Path(sys.executable).parent / "vatt")


def options_of(*command: str) -> set[str]:
    proc = subprocess.run([VATT, *command, "--help"], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"--[a-z][a-z-]*", proc.stdout))


def test_slurm_preprocess_array_script():
    script = ROOT / "examples" / "slurm" / "preprocess.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.strip().startswith("srun vatt preprocess"))
    words = shlex.split(line)
    assert words[:4] == ["srun", "vatt", "preprocess", "howto100m"]
    used = {w for w in words if w.startswith("--")}
    assert used <= options_of("preprocess", "howto100m"), used - options_of("preprocess", "howto100m")
    assert "#SBATCH --array=0-63" in text and "--resume" in used


def test_kubernetes_indexed_job():
    job = yaml.safe_load((ROOT / "examples" / "kubernetes" / "preprocess-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    assert {"name": "VATT_PARTS", "value": str(spec["completions"])} in container["env"]
    command = container["command"]
    assert command[:3] == ["vatt", "preprocess", "howto100m"] and "--resume" in command
    used = {w for w in command if w.startswith("--")}
    assert used <= options_of("preprocess", "howto100m"), used - options_of("preprocess", "howto100m")

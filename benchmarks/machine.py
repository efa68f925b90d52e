"""What every benchmark says about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """``lscpu``'s model name and the vector extensions that decide int8 speed, e.g.
    ``AMD EPYC (AVX-512 VNNI)``: ratios are comparable only within one of these."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor() or "unknown").strip()
    flags = set(fields.get("Flags", "").split())
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else None
    extras = [x for x in (isa, "AMX" if "amx_tile" in flags else None) if x]
    return f"{model} ({', '.join(extras)})" if extras else model


def write_results(script: str, part: str, title: str, result: dict) -> None:
    """``results/<script>_<part>.json`` (everything) and ``.md`` (the CPU, the time, the command
    and ``result["table"]``)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{script}_{part}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = [f"# {title}: {part}", "", f"CPU: {result['cpu']}, {result['cores']} cores; {result['seconds']} s; "
          f"`python benchmarks/{script}.py {part}`", "", result["table"]]
    (RESULTS / f"{script}_{part}.md").write_text("\n".join(md) + "\n")

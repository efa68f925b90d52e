"""What every benchmark says about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import platform
import subprocess


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

"""Coverage-guided fuzzing of the station's input boundaries with atheris (libFuzzer), for a
fixed budget, starting from the hostile corpus in tests/hostile/.

    pip install atheris          # or: pip install -e .[fuzz]
    python benchmarks/fuzz.py parser --seconds 60
    python benchmarks/fuzz.py all --seconds 60      # each target in turn, in its own process

Targets and what each may do with any bytes (anything else is a crash, and libFuzzer stops and
writes the input to crash-<sha1>):
- ``parser``: the serial parser never raises, and every message it returns is inside the
  protocol's ranges (hardware/protocol.py FIELD_RANGES).
- ``manifest``: a bundle whose manifest.json is these bytes loads or raises BundleError.
- ``station_file``: a station file of these bytes loads or raises ConfigError.
- ``image``: these bytes decode or raise FrameError (and never past the pixel limit).
- ``archive``: a bundle archive of these bytes loads or raises BundleError, and writes nothing
  outside its temporary folder.
- ``npz``: an ``.npz`` file of these bytes is read or raises ArrayFileError, never allocates
  past its limits (a header's claims are checked first: edge_runtime/model/arrays.py).
- ``heartbeat``: these bytes, parsed as serial frames, arrive in the middle of a clean line
  (tests/hostile/line_check.py, which also judges the ``streams`` corpus): no real, announced
  item is given up as unannounced (sent to the safe exit unseen), and every item's time on the
  station's clock stays within the clock's tolerance of when it arrived (not made late).

The summary line (executions, crashes, new coverage) is libFuzzer's own; results go to
``benchmarks/results/fuzz.md`` when ``--results`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "hostile"
SEEDS = {"parser": "serial", "manifest": "manifests", "station_file": "station_files", "image": "images",
         "archive": "archives", "npz": "bundle_files", "heartbeat": "serial"}


def _target(name: str):
    import atheris

    with atheris.instrument_imports(include=["sortline"]):
        from sortline.edge_runtime.daemon.config import ConfigError, load_station_file
        from sortline.edge_runtime.model.arrays import ArrayFileError, read_npz
        from sortline.edge_runtime.model.bundle import BundleError, load_bundle
        from sortline.hardware.camera import FrameError
        from sortline.hardware.images import MAX_IMAGE_PIXELS, decode_image
        from sortline.hardware.protocol import FIELD_RANGES, Parser

    work = Path(tempfile.mkdtemp(prefix="sortline-fuzz-"))
    bundle_dir = work / "bundle"
    bundle_dir.mkdir()
    for name_, data in (("backbone.onnx", b"x"), ("head.npz", b"y")):
        (bundle_dir / name_).write_bytes(data)

    def parser(data: bytes) -> None:
        p = Parser("fuzz")
        half = len(data) // 2
        for message in p.feed(data[:half]) + p.feed(data[half:]):
            for field, (lo, hi) in FIELD_RANGES[message.TYPE].items():
                if not lo <= getattr(message, field) <= hi:
                    raise AssertionError(f"{message} outside {field} range")

    def manifest(data: bytes) -> None:
        (bundle_dir / "manifest.json").write_bytes(data)
        with contextlib.suppress(BundleError):
            load_bundle(bundle_dir)

    def station_file(data: bytes) -> None:
        path = work / "station.toml"
        path.write_bytes(data)
        with contextlib.suppress(ConfigError):
            load_station_file(path)

    def image(data: bytes) -> None:
        try:
            decoded = decode_image(data, "fuzz")
        except FrameError:
            return
        if decoded.shape[0] * decoded.shape[1] > MAX_IMAGE_PIXELS:
            raise AssertionError(f"decoded {decoded.shape}, over the pixel limit")

    unpacked = work / "tmp"  # archives unpack in here (tempfile), so an escape would land in it
    unpacked.mkdir()
    tempfile.tempdir = str(unpacked)

    def archive(data: bytes) -> None:
        path = work / "b.tar"
        path.write_bytes(data)
        with contextlib.suppress(BundleError):
            load_bundle(path)
        known = ("bundle", "b.tar", "station.toml", "tmp")
        strays = [p for p in (*work.iterdir(), *unpacked.iterdir())
                  if p.name not in known and not p.name.startswith("sortline-bundle-")]
        if strays:
            raise AssertionError(f"wrote outside its folder: {strays}")
        for folder in unpacked.iterdir():  # each load's folder is removed at exit; do not let them pile up
            shutil.rmtree(folder, ignore_errors=True)

    def npz(data: bytes) -> None:
        with contextlib.suppress(ArrayFileError):
            arrays = read_npz(data, {"coef": 1000}, what="fuzz")
            if "coef" in arrays and arrays["coef"].size > 1000:
                raise AssertionError(f"coef of {arrays['coef'].shape} passed a limit of 1000 elements")

    sys.path.insert(0, str(CORPUS))
    from line_check import clean_line_with  # tests/hostile/line_check.py, as the corpus is judged

    def heartbeat(data: bytes) -> None:
        if not data:
            return
        check = clean_line_with(data[1:], where=data[0] % 16, pitch_s=0.02 + data[0] / 255)
        if check.harmed:
            raise AssertionError(f"frames {data[1:]!r} harmed real items: {check}")

    return {"parser": parser, "manifest": manifest, "station_file": station_file, "image": image,
            "archive": archive, "npz": npz, "heartbeat": heartbeat}[name]


def fuzz_one(name: str, seconds: int) -> None:
    import atheris

    seeds = Path(tempfile.mkdtemp(prefix=f"sortline-fuzz-{name}-"))
    for path in (CORPUS / SEEDS[name]).iterdir():  # libFuzzer adds what it finds to this copy
        (seeds / path.name).write_bytes(path.read_bytes())
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1", "-rss_limit_mb=4096",
                   "-timeout=10", str(seeds)], _target(name))
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=[*SEEDS, "all"])
    parser.add_argument("--seconds", type=int, default=60, help="budget per target")
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/fuzz.md")
    args = parser.parse_args()
    if args.target != "all":
        fuzz_one(args.target, args.seconds)
        return 0
    rows, failed = [], 0
    for name in SEEDS:
        started = time.monotonic()
        run = subprocess.run([sys.executable, __file__, name, "--seconds", str(args.seconds)], capture_output=True,
                             text=True, cwd=tempfile.gettempdir())
        log = run.stderr.splitlines()
        execs = next((line.split()[-1] for line in log if "stat::number_of_executed_units" in line), "?")
        cov = next((line.split("cov:")[1].split()[0] for line in reversed(log) if "cov:" in line), "?")
        crashed = run.returncode != 0
        failed += crashed
        rows.append(f"| {name} | {args.seconds} | {execs} | {cov} | {'CRASH' if crashed else 0} |")
        print(rows[-1], f"({time.monotonic() - started:.0f} s)", flush=True)
        if crashed:
            print("\n".join(log[-30:]))
    header = ["| target | seconds | executions | coverage (edges) | crashes |", "|---|---|---|---|---|"]
    table = "\n".join([*header, *rows])
    print(table)
    if args.results:
        from machine import cpu_name  # benchmarks/machine.py

        out = ROOT / "benchmarks" / "results" / "fuzz.md"
        out.write_text(f"# Fuzzing the input boundaries (atheris)\n\nCPU: {cpu_name()}. Command: "
                       f"`python benchmarks/fuzz.py all --seconds {args.seconds} --results`\n\n{table}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

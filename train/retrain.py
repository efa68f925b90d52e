"""The desktop's half of a station's adaptation: a bundle retrained on the items the operator
labelled, from the live bundle's own backbone.

When a line changes (a new variety, new packaging), a head refitted on frozen embeddings gives
back part of what the change took (docs/adaptation.md); the backbone has to see the new items.
:func:`desktop_retrain` makes the callable that ``sortline demo --adapt`` (hil/adapt.py) hands
its simulated operator: the bundle's labelled items are written once as an item folder tree
(``ITEMS/<class>/<item>/``: the views and the taps as the sensor sent them, hardware/items.py),
and each retrain is ``sortline fit`` on them and on the queue's exported labels, from the
bundle's backbone checkpoint (its item stage only: no pretraining), with the live bundle's
decision policy, signed: the command a person runs on a desktop. It runs as a process of its
own at a lower priority, so the station beside it keeps the CPU its deadlines need.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.bundle import DecisionPolicy
from sortline.edge_runtime.model.fusion import LabeledItem
from sortline.edge_runtime.model.policy import policy_toml
from sortline.hardware.items import write_readings, write_views

log = logging.getLogger(__name__)
NICE = 10  # the retrain's priority below the station's
RETRAIN_S = 900.0  # a retrain that takes longer than this is given up
# The item stage's epochs in a retrain, from a backbone that has had one: 10 end their schedule
# within the stage's 150 s on one thread beside a station (30 were cut at 333 of 600 steps).
RETRAIN_EPOCHS = 10.0


class RetrainError(SortlineError, RuntimeError):
    """The desktop's `sortline fit` failed; the message has the end of what it said."""


def write_item_tree(root: Path, items: Sequence[LabeledItem], classes: Sequence[str]) -> int:
    """``items`` as ``root/<class>/<k>/`` item folders (views and readings); returns how many."""
    for k, item in enumerate(items):
        folder = root / classes[item.label] / f"{k:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_views(folder, item.views)
        write_readings(folder, item.readings)
    return len(items)


def desktop_retrain(work: Path, items: Sequence[LabeledItem], classes: Sequence[str], checkpoint: Path,
                    policy: DecisionPolicy, seed: int = 0, key: Path | None = None,
                    item_epochs: float = RETRAIN_EPOCHS, threads: int = 1):
    """A retrain (hil/adapt.py's ``Retrain``): the queue's labelled items (an item folder tree) →
    the folder of a new signed bundle, ``sortline fit``'s item stage on ``items`` and them from
    ``checkpoint`` (``item_epochs`` of it), on ``threads`` threads (one: a
    station on the same machine keeps the other core). Raises :class:`RetrainError` when the
    command fails, or at once when ``stop`` is set (the process is killed)."""
    work = Path(work)
    done = [0]

    def retrain(labels: Path, stop: threading.Event) -> Path:
        ours = work / "items"
        if not ours.is_dir():
            write_item_tree(ours, items, classes)
        (work / "policy.toml").write_text(policy_toml(policy), encoding="utf-8")
        done[0] += 1
        out = work / f"bundle-{done[0]}"
        command = [sys.executable, "-m", "sortline.edge_runtime.cli", "fit", "--data", str(ours), str(labels),
                   "--checkpoint", str(checkpoint), "--out", str(out), "--policy", str(work / "policy.toml"),
                   "--seed", str(seed), "--item-epochs", str(item_epochs), "--quiet", "--json"]
        if key is not None:
            command += ["--key", str(key)]
        log.info("retraining on %s: %s", labels, " ".join(command))
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True,
                                       env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                       preexec_fn=lambda: os.nice(NICE))
            started = time.monotonic()
            while process.poll() is None:
                if stop.wait(0.5) or time.monotonic() - started > RETRAIN_S:
                    process.kill()
                    process.wait()
                    raise RetrainError("stopped" if stop.is_set() else f"`sortline fit` ran over {RETRAIN_S:.0f} s")
            stdout.seek(0)
            stderr.seek(0)
            said, errors = stdout.read(), stderr.read()
        if process.returncode != 0:
            raise RetrainError(f"`sortline fit` exited {process.returncode}: {errors[-1500:]}")
        report = json.loads(said.strip().splitlines()[-1])
        log.info("retrained %s in %s s", report["bundle"], report["seconds"])
        return Path(report["bundle"])

    return retrain

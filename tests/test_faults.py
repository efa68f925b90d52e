"""Hardware-in-the-loop: a simulated line that injects every kind of fault, and a station that
must give every item exactly one gate command and count exactly what was injected."""

from __future__ import annotations

import pytest

from sortline.edge_runtime.hil.runs import sort_on_simulated_line
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.hardware.sim.faults import FaultRates
from sortline.hardware.sim.line import LineConfig


@pytest.mark.slow
def test_every_item_one_command_and_every_fault_counted(tiny_bundle):
    line = LineConfig(items=300, pitch_ms=30, seed=11, faults=FaultRates.uniform(0.02))
    run = sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1), line, progress=False)
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"], s["duplicates"]) == (300, 300, 0, 0)
    assert all(count > 0 for count in s["faults_injected"].values()), s["faults_injected"]
    assert s["faults"] == s["faults_injected"]
    # Lost announcements are found from the consecutive item ids and go to the safe exit.
    assert s["unannounced"] == s["reasons"].get("unannounced", 0) > 0
    assert s["retransmissions"] > 0  # the silences made the station resend


def test_fault_rates_are_bounded():
    assert FaultRates.uniform(0.01).garbled == 0.01 and FaultRates.uniform(0.0).any is False
    with pytest.raises(ValueError):
        FaultRates.uniform(0.5)

"""Simulators of a station's hardware: the avocado line and the checkout (what passes), the
line's controller and item sensor on real pseudo-terminals with injected faults, the
controller's side as referee, and recordings replayed. The drivers in ``sortline.hardware``
never import these; tests, the demo and replay do."""

"""Station hardware: frame sources, the serial protocols of the tap sensor and the line
controller, and simulators that speak them over real pseudo-terminals. No torch here."""

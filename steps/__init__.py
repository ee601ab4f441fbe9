"""Step definitions of the gate scenarios (features/), one module per capability."""

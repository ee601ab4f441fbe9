"""The conformance gates: which scenarios make each gate, the pytest plugin that writes a
gate's reports, deliberately broken workers, and the self-test that shows the gates catch them."""

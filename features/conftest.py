"""The gates plugin (options, selection, reports) and the step definitions, one module per
capability (steps/)."""

pytest_plugins = [
    "gates.plugin",
    "steps.worker_steps",
    "steps.health_steps",
    "steps.execute_steps",
    "steps.validation_steps",
    "steps.cancel_steps",
    "steps.gguf_steps",
    "steps.tokenizer_steps",
    "steps.generation_steps",
    "steps.architecture_steps",
    "steps.memory_steps",
    "steps.mxfp4_steps",
    "steps.utf8_steps",
]

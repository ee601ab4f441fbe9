@gate1
Feature: Health report
  An orchestrator asks a worker what it serves and whether it is well, before it sends work.

  Scenario: The health report has every field of the contract, each of the right type
    Given a running worker
    When I ask for its health
    Then the health report has these fields:
      | field                | type                                |
      | status               | one of healthy, unhealthy, starting |
      | model                | text                                |
      | architecture         | text                                |
      | resident             | boolean                             |
      | quant_kind           | text                                |
      | vram_bytes_used      | count                               |
      | tokenizer_kind       | one of gguf-bpe, gguf-spm, hf-json  |
      | vocab_size           | positive count                      |
      | context_length       | positive count                      |
      | uptime_seconds       | non-negative number                 |
      | device               | device name                         |
      | sm                   | text, number or nothing             |
      | cuda_runtime_version | text, number or nothing             |
      | worker_id            | text                                |
      | busy                 | boolean                             |
      | queued               | count                               |
    And the worker reports itself healthy

@gate4
Feature: Recovering from running out of device memory
  A job that needs more device memory than the worker may use fails alone: it ends with
  VRAM_OOM, its buffers are freed, and the next job is served.

  Scenario: A job whose KV cache does not fit ends with VRAM_OOM and the worker recovers
    Given a worker serving the SmolLM2 model with a memory limit that fits its weights but not a long job's KV cache
    And I note the device memory in use
    When I execute a job whose KV cache does not fit
    Then the stream ends with error "VRAM_OOM"
    And the device memory in use returns to the level noted
    When I execute "Hello" with max_tokens 4 and temperature 0
    Then the stream ends normally
    And the device memory in use returns to the level noted

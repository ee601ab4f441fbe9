@gate4 @cuda
Feature: Models live in VRAM only
  On a GPU every weight and KV-cache buffer is device memory: no host fallback, no unified memory.

  Scenario Outline: The <model> model lives in VRAM only
    Given a worker serving the <model> model on a GPU
    When I execute "Write a haiku about GPUs" with max_tokens 4 and temperature 0
    Then the health report says every weight and cache buffer is resident in device memory

    Examples:
      | model           |
      | SmolLM2         |
      | Qwen            |
      | phi3 fixture    |
      | gpt2 fixture    |
      | gpt-oss fixture |

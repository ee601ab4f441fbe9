@gate2
Feature: The Qwen model serves
  The mission's first model, Qwen2.5-0.5B-Instruct Q4_K_M, answers over HTTP, deterministically
  when asked to be.

  Background:
    Given a worker serving the Qwen model

  Scenario: The health report describes the Qwen model
    When I ask for its health
    Then the health report says:
      | field          | value    |
      | architecture   | qwen2    |
      | quant_kind     | Q4_K_M   |
      | tokenizer_kind | gguf-bpe |
      | vocab_size     | 151936   |

  Scenario: The haiku prompt streams a haiku, the same three times at temperature 0
    When I execute the haiku prompt as a chat turn three times with temperature 0, seed 42 and max_tokens 50
    Then every run streams a haiku
    And all runs stream identical token ids and text

  Scenario: Sampling at temperature 0.7 with a fixed seed is reproducible
    When I execute the haiku prompt as a chat turn three times with temperature 0.7, seed 42 and max_tokens 50
    Then every run streams a haiku
    And all runs stream identical token ids and text

  Scenario: Different seeds at temperature 0.7 give different outputs
    When I execute the haiku prompt as a chat turn with temperature 0.7, max_tokens 16 and seeds 1, 2 and 3
    Then the runs do not all stream the same token ids

  @cuda
  Scenario: The Qwen model lives in VRAM only
    Given a worker serving the Qwen model on a GPU
    When I execute "Write a haiku about GPUs" with max_tokens 4 and temperature 0
    Then the health report says every weight and cache buffer is resident in device memory

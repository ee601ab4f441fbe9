@gate3
Feature: Every architecture is detected and routed to its adapter
  The worker reads the architecture from the GGUF file, picks the adapter for its family and
  generates with it. Fixture models stand in for the architectures no package ships.

  Scenario Outline: A <architecture> model is detected, routed and generates
    Given a worker serving the <model> model
    Then the health report names the architecture "<architecture>"
    When I execute "The capital of France is" with max_tokens 4 and temperature 0
    Then the stream ends normally
    And the stream carries at least one token

    Examples:
      | model           | architecture |
      | SmolLM2         | llama        |
      | Qwen            | qwen2        |
      | phi3 fixture    | phi3         |
      | gpt2 fixture    | gpt2         |
      | gpt-oss fixture | gpt-oss      |

  Scenario: Models load one after another in one run
    Given a worker serving the SmolLM2 model
    When I execute "Once upon a time" with max_tokens 2 and temperature 0
    Then the stream ends normally
    When I stop that worker and start a worker serving the Qwen model
    Then the stopped worker exited with status 0
    And the health report names the architecture "qwen2"
    When I execute "Once upon a time" with max_tokens 2 and temperature 0
    Then the stream ends normally

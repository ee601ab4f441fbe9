@gate1
Feature: Prompts in many scripts
  Users write in every script; the worker tokenizes their prompts on the model's vocabulary.
  Over HTTP a worker shows this by accepting the prompt and counting its tokens.

  Scenario Outline: A prompt in <language> is accepted and its tokens are counted
    Given a running worker
    When I execute the <language> sample with max_tokens 1
    Then the stream ends normally
    And the started event reports the prompt's token count

    Examples:
      | language |
      | English  |
      | Chinese  |
      | Japanese |
      | Korean   |
      | Arabic   |
      | Hebrew   |
      | Hindi    |
      | Russian  |
      | Greek    |
      | Thai     |
      | emoji    |
      | mixed    |

  @reference
  Scenario Outline: The reference tokenizer round-trips every sample on the <model> vocabulary
    Given the <model> model's vocabulary
    Then encoding each multilingual sample and decoding the ids gives the sample back

    Examples:
      | model   |
      | SmolLM2 |
      | Qwen    |

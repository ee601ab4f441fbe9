@gate4
Feature: UTF-8 safety of streamed text
  Byte-level tokens can end inside a character; the worker holds such bytes back until the
  character is whole, so every streamed piece is valid UTF-8 and the pieces add up.

  Scenario Outline: An answer in <language> streams as whole characters
    Given a worker serving the Qwen model
    When I ask in <language> for a short answer in <language>, as a chat turn with max_tokens 24
    Then every token text is valid UTF-8 with no replacement character
    And the streamed text holds characters beyond ASCII
    And the token texts joined are consistent with the streamed token ids

    Examples:
      | language |
      | Chinese  |
      | Japanese |
      | Arabic   |
      | emoji    |

  Scenario Outline: A <language> character that spans several tokens is held back until whole
    Given a worker serving the SmolLM2 model
    When I execute the <language> sample with max_tokens 16
    Then every token text is valid UTF-8 with no replacement character
    And some token event carries several ids: a character was held back until it was whole
    And the token texts joined are consistent with the streamed token ids

    Examples:
      | language |
      | Japanese |
      | Chinese  |
      | Korean   |
      | Thai     |

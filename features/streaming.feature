@gate1
Feature: Streaming a job
  A client posts a job and reads its tokens as Server-Sent Events while they are generated.

  Scenario: A job streams started, then tokens, then exactly one terminal event
    Given a running worker
    When I execute "Write a haiku about GPUs" with max_tokens 8 and temperature 0
    Then the stream opens with a started event for my job
    And the stream has exactly one terminal event, and it comes last
    And the token indexes count up from 0 without gaps
    And the stream ends normally

  Scenario: One token goes through HTTP, engine and backend and comes back as one event
    Given a running worker
    When I execute "Hello" with max_tokens 1 and temperature 0
    Then the stream has exactly 1 token event
    And the end event reports 1 token out and stop reason "max_tokens"

  Scenario: Every streamed text piece is whole UTF-8
    Given a running worker
    When I execute "Continue in kind: café, naïve, こんにちは, 你好, مرحبا, 🎉🚀," with max_tokens 16 and temperature 0
    Then every token text is valid UTF-8 with no replacement character
    And the stream ends normally

@gate1 @reference
Feature: Damaged model files are refused with a clear message
  An operator who points the worker at a broken file learns which file and what is wrong with
  it, instead of a stack trace. (This checks the reference worker's own reader and CLI.)

  Background:
    Given a small valid GGUF model file made with the gguf writer

  Scenario Outline: A GGUF file with <damage> is refused by the reader, by inspect and by serve
    Given a copy of it with <damage>
    Then the reference reader refuses the copy, naming the file and "<problem>"
    And "worker inspect" on the copy exits 1 with a line naming the file and "<problem>"
    And "worker serve" on the copy exits 1 with a line naming the file and "<problem>"

    Examples:
      | damage                    | problem                  |
      | a bad magic number        | bad magic                |
      | GGUF version 2            | version                  |
      | its tensor data cut short | past the end of the file |

@gate1
Feature: Request validation
  A worker refuses a request it cannot serve as asked, with 400 and the name of the field,
  before any stream opens.

  Scenario Outline: A request with <field> set to <value> is rejected, naming the field
    Given a running worker
    When I execute a valid request with <field> set to <value>
    Then the request is rejected with 400 "INVALID_REQUEST" naming the field "<field>"

    Examples: out of range
      | field              | value                     |
      | job_id             | ""                        |
      | job_id             | "j" * 257                 |
      | prompt             | ""                        |
      | prompt             | "a" * 32769               |
      | max_tokens         | 0                         |
      | max_tokens         | 2049                      |
      | temperature        | -0.1                      |
      | temperature        | 2.01                      |
      | temperature        | 3.0                       |
      | top_p              | -0.1                      |
      | top_p              | 1.01                      |
      | top_k              | -1                        |
      | top_k              | vocab_size + 1            |
      | min_p              | -0.1                      |
      | min_p              | 1.5                       |
      | repetition_penalty | -0.5                      |
      | repetition_penalty | 2.5                       |
      | stop               | ["a", "b", "c", "d", "e"] |
      | stop               | [""]                      |
      | stop               | ["word " * 40]            |
      | seed               | -1                        |
      | seed               | 2 ** 64                   |

    Examples: wrong type
      | field              | value     |
      | job_id             | 42        |
      | prompt             | ["Hello"] |
      | max_tokens         | "8"       |
      | max_tokens         | 1.5       |
      | temperature        | "warm"    |
      | top_p              | "all"     |
      | top_k              | 2.5       |
      | min_p              | "low"     |
      | repetition_penalty | "none"    |
      | stop               | "END"     |
      | stop               | [7]       |
      | seed               | "42"      |
      | seed               | 4.2       |
      | chat               | "yes"     |

    Examples: unknown field
      | field  | value  |
      | colour | "blue" |

  Scenario Outline: A request without its <field> is rejected, naming the field
    Given a running worker
    When I execute a valid request without <field>
    Then the request is rejected with 400 "INVALID_REQUEST" naming the field "<field>"

    Examples:
      | field  |
      | job_id |
      | prompt |

  Scenario: A body that is not valid JSON is rejected
    Given a running worker
    When I post a request body that is not valid JSON
    Then the request is rejected with 400 "INVALID_REQUEST"

  Scenario: A prompt that leaves no room in the context for max_tokens is rejected
    Given a running worker
    When I execute a prompt longer than the context leaves room for
    Then the request is rejected with 400 "CONTEXT_LENGTH_EXCEEDED"

  Scenario: The valid request the examples start from is accepted
    Given a running worker
    When I execute a valid request
    Then the stream ends normally

@gate1
Feature: Cancelling jobs
  A client that no longer wants a job's output cancels it; cancelling is always safe to repeat.

  Scenario: Cancelling is idempotent: unknown jobs, twice, finished jobs
    Given a running worker
    And a job id the worker has never seen
    When I cancel that job
    Then the worker accepts the cancel with 202
    When I cancel it again
    Then the worker accepts the cancel with 202
    When I execute "Hello" with max_tokens 2 and temperature 0
    And I cancel the job that just finished
    Then the worker accepts the cancel with 202

  Scenario: A running job cancelled through /cancel ends with CANCELLED
    Given a running worker
    When I start a long job and cancel it through /cancel after its first token
    Then the stream ends with error "CANCELLED"
    And the job stopped before its max_tokens
    And the worker then serves the next job normally

  Scenario: A second job with the id of a running job is rejected
    Given a running worker
    When I start a long job and, while it runs, execute another job with the same job id
    Then the request is rejected with 400 "INVALID_REQUEST" naming the field "job_id"
    And the worker then serves the next job normally

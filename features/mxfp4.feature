@gate4 @reference
Feature: MXFP4 numerics
  GPT-OSS stores its experts in MXFP4; the reference implementation decodes and multiplies
  them exactly as ggml defines the format.

  Scenario: MXFP4 dequantization matches gguf.quants bit for bit on random blocks
    Given 4096 random MXFP4 blocks made with seed 7
    When I dequantize them with the reference implementation and with gguf.quants
    Then both give bit-identical values

  Scenario Outline: An MXFP4 matrix-vector product on the <backend> backend matches float64
    Given a random 256 x 2880 MXFP4 weight matrix in a GGUF file, seed 11
    When the <backend> backend multiplies it by a random vector
    Then the product equals float64 arithmetic on the dequantized weights within 1e-5 relative

    Examples:
      | backend   |
      | reference |

    @cuda
    Examples:
      | backend |
      | CUDA    |

"""Every scenario of every feature file in this folder becomes a test."""

from pytest_bdd import scenarios

scenarios(".")

"""Tests of the consumer: handler, local runner, packaging, template, end to end."""

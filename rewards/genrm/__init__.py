"""Generative reward models (GenRM): a judge LLM reads a prompt and two responses, reasons, and
writes a fixed verdict; RL scores a group of responses by circular comparison.

- :mod:`rewards.genrm.verdict`: the judge prompt (responses quoted so they cannot forge markup)
  and strict verdict parsing.
- :mod:`rewards.genrm.compare`: circular pairing, both-orders averaging, verdicts -> per-response
  rewards, group-relative length control and the quality-gated conciseness bonus.
"""

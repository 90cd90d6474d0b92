"""aidsafe: policy-embedded chain-of-thought safety data (SFT and DPO) made by LLM agents."""

__version__ = "0.1.0"

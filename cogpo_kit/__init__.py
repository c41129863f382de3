"""cogpo-kit: CRV + CogPO, teaching small language models according to their ability."""

__version__ = "0.1.0"

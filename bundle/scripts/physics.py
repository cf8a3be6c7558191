"""Constants of CT perfusion physics, in one place for the method (``perfusion``) and the simulator
(``simulation``) alike; the independent digital phantom keeps its own copy on purpose."""

RHO = 1.04
"""Brain tissue density (g/ml)."""

K_H = 0.73
"""Haematocrit correction (1 - Hct_large) / (1 - Hct_small) = 0.55 / 0.75."""

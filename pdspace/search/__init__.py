"""How designs are chosen: sweep plans, the greedy staged search S0 -> S4, refinement (and studies)."""

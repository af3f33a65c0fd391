"""pdspace's design-space sampling sweeper for Hydra (select it with a `space=` config)."""

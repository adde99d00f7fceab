"""Training: the state and jitted step (step.py), the loop (loop.py), checkpoints
(checkpoint.py) and the engine that puts them together (fit.py). Import from the modules."""

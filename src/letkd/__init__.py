"""letkd — knowledge distillation with learnable KD layers (letKD) and the usual baselines."""

__version__ = "0.1.0"

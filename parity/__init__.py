"""PyTorch parity layer: torch reference models, weight converters both ways, the parity CLI."""

"""Desktop training: backbones, self-supervised methods, the training loop, the demo."""

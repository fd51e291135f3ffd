"""Label smoothing of a Fashion-MNIST classifier: a third method for contrastive-ablations, shipped as its own package."""

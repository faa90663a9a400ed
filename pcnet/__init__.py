"""pcnet: predictive-coding dynamics for pretrained convolutional networks (after Predify)."""

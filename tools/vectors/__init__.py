"""Protocol vectors: generation (`make`) and checking (`check`)."""

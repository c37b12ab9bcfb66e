"""Networks: the lightweight 2D encoders (and, later, the 3D decoders and the registration network)."""

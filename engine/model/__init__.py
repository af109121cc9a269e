"""Loading a model (in memory, or layer by layer from disk), the layer-by-layer loop, finding its decoder layers and Linears, and the text corpus."""

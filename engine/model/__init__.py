"""Loading a model (in memory), finding its decoder layers and Linears, and the text corpus."""

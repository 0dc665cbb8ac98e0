"""Stage 4: the sense dictionary (reservoir -> per-token k-means) and exact top-kappa candidates."""

"""Normalized density: AIS for log Z of each conditional EBM (ais, levels), 2D quadrature as its
ground truth (quadrature), the bound on log p(x_0) over the diffusion path (bound), figures
(plots); long-run chain diagnostics in longrun."""

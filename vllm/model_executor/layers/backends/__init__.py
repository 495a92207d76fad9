"""MoE/GEMM backends: how the model's non-attention ops run (linears, router, MoE, mHC)."""

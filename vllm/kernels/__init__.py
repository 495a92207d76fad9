"""Kernels, one op per file: `<op>_ref` (torch reference), Triton kernel and launcher where they exist."""

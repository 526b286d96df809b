"""The Sparse Attention-based Alignment Layer (paper section 3.2)."""

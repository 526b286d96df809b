"""mufasa: MUltimodal Fusion And Sparse-attention Alignment for long sequential recommendation."""

__version__ = "0.1.0"

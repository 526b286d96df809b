"""The Multimodal Fusion Layer (paper section 3.1): LightGCN CF targets, fusion network, losses."""

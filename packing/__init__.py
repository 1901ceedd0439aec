"""vlmloom.packing."""
